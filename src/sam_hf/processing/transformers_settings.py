"""transformers' `SamImageProcessor` settings read as sam_hf's, so that a transformers-format folder (the processor
config of `facebook/sam-vit-*`) loads into `SamHfImageProcessor` / `SamHfProcessor`.

transformers rescales 0..255 values by `rescale_factor` and then normalizes by `image_mean` / `image_std`, which is
normalizing the 0..255 values by `image_mean / rescale_factor` and `image_std / rescale_factor`: sam_hf's
`pixel_mean` / `pixel_std`. Its `size={"longest_edge": S}` is `longest_edge` and `mask_size` the low-resolution mask
side (`mask_input_size`); its padded sizes must be squares of those sides, and its switches (`do_resize`,
`do_pad`, `do_normalize`, `do_convert_rgb`) on, with bilinear resampling: a setting sam_hf does not follow raises a
`ValueError` naming it, nothing is dropped silently.
"""

from __future__ import annotations

import math

# transformers' defaults for SAM (ImageNet's mean and std on 0..1 values, 1 / 255)
_DEFAULTS = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225), "do_rescale": True,
             "rescale_factor": 1 / 255}
_SWITCHES = ("do_resize", "do_pad", "do_normalize", "do_convert_rgb")
_BILINEAR = 2  # PIL.Image.BILINEAR, transformers' PILImageResampling.BILINEAR
TRANSFORMERS_KEYS = frozenset({"size", "pad_size", "image_mean", "image_std", "do_rescale", "rescale_factor", "resample", "mask_size",
                  "mask_pad_size", *_SWITCHES})


def _side(value, name: str, keys: tuple[str, ...]) -> int:
    """A {key: S, ...} dict whose `keys` all hold the same positive int S."""
    if not isinstance(value, dict) or set(value) != set(keys):
        raise ValueError(f"{name} must be a dict with keys {list(keys)} (transformers' form), got {value!r}")
    sides = {value[key] for key in keys}
    side = next(iter(sides))
    if len(sides) != 1 or isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"{name} must give one positive int side for {list(keys)} (sam_hf pads to a square), got {value!r}")
    return side


def read_transformers_settings(settings: dict) -> dict:
    """transformers' settings (a subset of `TRANSFORMERS_KEYS`) -> sam_hf's: {"longest_edge"?, "mask_input_size"?,
    "pixel_mean", "pixel_std"}."""
    out = {}
    for switch in _SWITCHES:
        if settings.get(switch, True) is not True:
            raise ValueError(f"{switch}={settings[switch]!r}: sam_hf's image processor always resizes, pads, normalizes and "
                             "converts to RGB, as SAM needs; this transformers setting cannot be followed")
    resample = settings.get("resample", _BILINEAR)
    if int(resample) != _BILINEAR:
        raise ValueError(f"resample={resample!r}: sam_hf resizes bilinearly (2), as Meta's SAM; got another filter")
    if "size" in settings:
        out["longest_edge"] = _side(settings["size"], "size", ("longest_edge",))
    side = out.get("longest_edge")
    if "pad_size" in settings and side is not None and _side(settings["pad_size"], "pad_size", ("height", "width")) != side:
        raise ValueError(f"pad_size={settings['pad_size']!r} must be the resized side {side} (sam_hf pads to that square)")
    if "mask_size" in settings:  # the low-resolution mask side (transformers pads masks to mask_pad_size)
        out["mask_input_size"] = _side(settings["mask_size"], "mask_size", ("longest_edge",))
        if "mask_pad_size" in settings and _side(settings["mask_pad_size"], "mask_pad_size", ("height", "width")) != out["mask_input_size"]:
            raise ValueError(f"mask_pad_size={settings['mask_pad_size']!r} must be the mask side {out['mask_input_size']} "
                             "(sam_hf's low-resolution masks are square)")
    rescale = settings.get("rescale_factor", _DEFAULTS["rescale_factor"]) if settings.get("do_rescale", True) else 1.0
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not math.isfinite(rescale) or rescale <= 0:
        raise ValueError(f"rescale_factor must be a positive number, got {rescale!r}")
    for ours, theirs in (("pixel_mean", "image_mean"), ("pixel_std", "image_std")):
        values = settings.get(theirs, _DEFAULTS[theirs])
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            raise ValueError(f"{theirs} must be 3 numbers (R, G, B), got {values!r}")
        out[ours] = [v / rescale for v in values]
    return out
