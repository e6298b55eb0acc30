"""A synthetic instance-segmentation dataset with exact masks, for tests, examples and the shipped model.

Each image has a background (solid, gradient, noise or stripes) and 1..`max_objects` shapes of several
kinds (ellipse, rectangle, polygon, star, ring, blob), each with its own fill (solid, gradient, noise,
stripes, checker), painted in order so that later shapes occlude earlier ones. The masks are the visible
parts: pairwise disjoint and exactly the pixels painted by that shape (no anti-aliasing). A shape whose
placement would leave itself or an earlier shape with fewer than `min_visible_area` visible pixels is
placed again or skipped, so every painted shape is annotated.

Image `i` depends only on (`seed`, `i`): datasets of different lengths share their first images.
"""

from __future__ import annotations

import math

import numpy as np

SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "star", "ring", "blob")
FILL_KINDS = ("solid", "gradient", "noise", "stripes", "checker")
BACKGROUND_KINDS = ("solid", "gradient", "noise", "stripes")
MASK_FORMATS = ("image", "rle", "id_map")


def _rotated(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _inside_polygon(xx: np.ndarray, yy: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule over the pixel centres; `vertices` (V, 2) as x, y."""
    inside = np.zeros(xx.shape, dtype=bool)
    x1, y1 = vertices[:, 0], vertices[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2):
        crosses = (ay > yy) != (by > yy)
        x_at = ax + (yy - ay) * (bx - ax) / ((by - ay) if by != ay else 1e-12)
        inside ^= crosses & (xx < x_at)
    return inside


def _shape_mask(kind: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """Full (unoccluded) mask of one random shape on the pixel-centre grid `xx`, `yy` of (H, W)."""
    h, w = xx.shape
    r = rng.uniform(0.06, 0.3) * size  # characteristic radius
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0, math.pi)
    u, v = _rotated(xx, yy, cx, cy, angle)
    if kind == "ellipse":
        a, b = r, r * rng.uniform(0.4, 1.0)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "rectangle":
        a, b = r, r * rng.uniform(0.3, 1.0)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "ring":
        a, b = r, r * rng.uniform(0.6, 1.0)
        t = rng.uniform(0.4, 0.7)
        outer = (u / a) ** 2 + (v / b) ** 2 <= 1
        return outer & ((u / (t * a)) ** 2 + (v / (t * b)) ** 2 > 1)
    if kind == "blob":
        theta = np.arctan2(v, u)
        radius = np.ones_like(theta)
        for k in range(2, 5):
            radius = radius + rng.uniform(0, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        return np.hypot(u, v) <= r * radius
    if kind == "polygon":  # a star-shaped (hence simple) polygon with 3..8 vertices
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = r * rng.uniform(0.5, 1.0, n)
    elif kind == "star":
        n = int(rng.integers(4, 9))
        angles = angle + np.arange(2 * n) * math.pi / n
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
    else:
        raise ValueError(f"shape kind must be one of {SHAPE_KINDS}, got {kind!r}")
    vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)  # (V, 2)
    return _inside_polygon(xx, yy, vertices)


def _fill(kind: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A float (H, W, 3) texture in [0, 255]."""
    color = rng.uniform(0, 255, 3)
    if kind == "solid":
        return np.broadcast_to(color, xx.shape + (3,)).astype(np.float32)
    other = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)  # (H, W)
    if kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        return (color * (1 - t[..., None]) + other * t[..., None]).astype(np.float32)
    if kind == "noise":
        return (color + rng.normal(0, rng.uniform(5, 30), xx.shape + (3,))).astype(np.float32)
    if kind == "stripes":
        period = rng.uniform(4, 16)
        t = (np.sin(2 * math.pi * along / period) > 0)[..., None]
        return np.where(t, color, other).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(4, 12)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0)[..., None]
        return np.where(t, color, other).astype(np.float32)
    raise ValueError(f"fill kind must be one of {FILL_KINDS}, got {kind!r}")


def render_sample(
    *,
    rng: np.random.Generator,
    height: int,
    width: int,
    max_objects: int = 8,
    min_objects: int = 1,
    min_visible_area: int = 64,
    shape_kinds: tuple[str, ...] = SHAPE_KINDS,
    fill_kinds: tuple[str, ...] = FILL_KINDS,
    background_kinds: tuple[str, ...] = BACKGROUND_KINDS,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One image: uint8 (H, W, 3), visible masks bool (K, H, W) in painting order, and their shape kinds."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5  # pixel centres, (H, W) each
    image = _fill(background_kinds[int(rng.integers(len(background_kinds)))], rng, xx, yy)
    image = np.array(image, copy=True)
    size = min(height, width)
    visible: list[np.ndarray] = []
    kinds: list[str] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        kind = shape_kinds[int(rng.integers(len(shape_kinds)))]
        for _attempt in range(10):
            full = _shape_mask(kind, rng, xx, yy, size)
            if full.sum() >= min_visible_area and all((m & ~full).sum() >= min_visible_area for m in visible):
                break
        else:
            continue  # could not place this shape without hiding another one
        fill = _fill(fill_kinds[int(rng.integers(len(fill_kinds)))], rng, xx, yy)
        image[full] = fill[full]
        visible = [m & ~full for m in visible]
        visible.append(full)
        kinds.append(kind)
    masks = np.stack(visible) if visible else np.zeros((0, height, width), dtype=bool)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), masks, kinds


def _encode_rle(mask: np.ndarray) -> dict:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("mask_format='rle' needs pycocotools: pip install sam-hf[coco]") from error
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _generate(*, indices, seed, image_size, mask_format, render_kwargs):
    from PIL import Image

    for index in indices:
        rng = np.random.default_rng([seed, index])
        if isinstance(image_size, int):
            height = width = image_size
        else:
            height, width = (int(rng.integers(image_size[0], image_size[1] + 1)) for _ in range(2))
        image, masks, kinds = render_sample(rng=rng, height=height, width=width, **render_kwargs)
        row = {"image": Image.fromarray(image), "shapes": kinds}
        if mask_format == "image":
            row["masks"] = [Image.fromarray(m.astype(np.uint8) * 255) for m in masks]
        elif mask_format == "rle":
            row["masks"] = [_encode_rle(m) for m in masks]
        else:
            id_map = np.zeros((height, width), dtype=np.uint8)
            for i, m in enumerate(masks):
                id_map[m] = i + 1
            row["masks"] = Image.fromarray(id_map)
        yield row


def build_synthetic_dataset(
    *,
    num_images: int,
    seed: int = 0,
    image_size: int | tuple[int, int] = 256,
    mask_format: str = "image",
    max_objects: int = 8,
    min_objects: int = 1,
    min_visible_area: int = 64,
    shape_kinds: tuple[str, ...] = SHAPE_KINDS,
    fill_kinds: tuple[str, ...] = FILL_KINDS,
    background_kinds: tuple[str, ...] = BACKGROUND_KINDS,
    cache_dir: str | None = None,
):
    """A `datasets.Dataset` with columns `image` (PIL), `masks` and `shapes` (kind of each instance).

    `masks` is a list of binary mask images (`mask_format="image"`), a list of COCO RLE dicts
    `{"size": [H, W], "counts": str}` (`"rle"`), or one instance-id image with 0 for background and
    i + 1 for the i-th instance (`"id_map"`, at most 255 instances). `image_size` is the side of square
    images or a (min, max) range for the height and the width drawn per image.
    """
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("build_synthetic_dataset needs the datasets package: pip install sam-hf[training]") from error
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if isinstance(image_size, int):
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
    elif not (isinstance(image_size, (tuple, list)) and len(image_size) == 2 and 16 <= image_size[0] <= image_size[1]):
        raise ValueError(f"image_size must be an int or a (min, max) pair with 16 <= min <= max, got {image_size!r}")
    if not 1 <= min_objects <= max_objects or max_objects > 255:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 255, got {min_objects} and {max_objects}")
    for name, values, allowed in (("shape_kinds", shape_kinds, SHAPE_KINDS), ("fill_kinds", fill_kinds, FILL_KINDS),
                                  ("background_kinds", background_kinds, BACKGROUND_KINDS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {tuple(values)!r}")
    if mask_format == "image":
        masks_feature = datasets.List(datasets.Image())
    elif mask_format == "rle":
        masks_feature = datasets.List({"size": datasets.List(datasets.Value("int32")), "counts": datasets.Value("string")})
    else:
        masks_feature = datasets.Image()
    features = datasets.Features({"image": datasets.Image(), "masks": masks_feature,
                                  "shapes": datasets.List(datasets.Value("string"))})
    render_kwargs = dict(max_objects=max_objects, min_objects=min_objects, min_visible_area=min_visible_area,
                         shape_kinds=tuple(shape_kinds), fill_kinds=tuple(fill_kinds), background_kinds=tuple(background_kinds))
    size = image_size if isinstance(image_size, int) else tuple(image_size)
    return datasets.Dataset.from_generator(
        _generate, features=features, cache_dir=cache_dir,
        gen_kwargs=dict(indices=list(range(num_images)), seed=seed, image_size=size, mask_format=mask_format,
                        render_kwargs=render_kwargs),
    )
