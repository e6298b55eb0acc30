"""SamHfImageProcessor against Meta's ResizeLongestSide + Sam.preprocess, and against transformers."""
import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide as MetaResize

from sam_hf.processing import ResizeLongestSide, SamHfImageProcessor, get_preprocess_shape

SIZES = [(480, 640), (333, 517), (517, 333), (129, 127), (1, 7), (64, 64), (1024, 768), (1500, 2001)]


def _exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("longest_edge", [1024, 256, 128])
def test_preprocess_shape_matches_meta(longest_edge):
    for h in list(range(1, 60)) + [127, 333, 517, 999, 1023, 1024, 1025, 2001, 4000]:
        for w in (1, 3, 17, 128, 517, 1024, 3000):
            expected = MetaResize.get_preprocess_shape(h, w, longest_edge)
            assert get_preprocess_shape(h, w, longest_edge) == expected
            assert ResizeLongestSide.get_preprocess_shape(h, w, longest_edge) == expected


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("longest_edge", [1024, 128])
def test_pixel_values_match_meta(size, longest_edge, rng, meta_pixel_values):
    if min(get_preprocess_shape(*size, longest_edge)) < 1:
        pytest.skip("too thin for this side")
    rgb = rng.randint(0, 256, size=(*size, 3), dtype=np.uint8)
    out = SamHfImageProcessor(longest_edge=longest_edge)(rgb)
    _exact(out["pixel_values"], meta_pixel_values(rgb, longest_edge))
    assert out["original_sizes"].tolist() == [list(size)]
    assert out["reshaped_input_sizes"].tolist() == [list(get_preprocess_shape(*size, longest_edge))]


def test_resize_matches_meta_apply_image(rng):
    for size in SIZES[:6]:
        rgb = rng.randint(0, 256, size=(*size, 3), dtype=np.uint8)
        ours = ResizeLongestSide(256).apply_image(rgb)
        np.testing.assert_array_equal(ours, MetaResize(256).apply_image(rgb))
        np.testing.assert_array_equal(SamHfImageProcessor(longest_edge=256).resize(rgb), ours)


def test_coords_and_boxes_match_meta(rng):
    ours, meta = ResizeLongestSide(1024), MetaResize(1024)
    for size in [(333, 517), (517, 333), (129, 127)]:
        coords = rng.rand(5, 3, 2) * 500
        boxes = np.sort(rng.rand(4, 2, 2) * 500, axis=1).reshape(4, 4)
        np.testing.assert_array_equal(ours.apply_coords(coords, size), meta.apply_coords(coords, size))
        np.testing.assert_array_equal(ours.apply_boxes(boxes, size), meta.apply_boxes(boxes, size))
        _exact(ours.apply_coords_torch(torch.tensor(coords), size), meta.apply_coords_torch(torch.tensor(coords), size))
        _exact(ours.apply_boxes_torch(torch.tensor(boxes), size), meta.apply_boxes_torch(torch.tensor(boxes), size))


def test_batch_of_different_sizes(rng, meta_pixel_values):
    images = [rng.randint(0, 256, size=(*s, 3), dtype=np.uint8) for s in [(50, 90), (129, 127), (128, 32)]]
    out = SamHfImageProcessor(longest_edge=128)(images)
    assert out["pixel_values"].shape == (3, 3, 128, 128)
    for i, rgb in enumerate(images):
        _exact(out["pixel_values"][i : i + 1], meta_pixel_values(rgb, 128))
    assert out["original_sizes"].tolist() == [[50, 90], [129, 127], [128, 32]]


# --- every input kind -> the uint8 RGB that Meta's code would be given -------------------------------------------


def _gray16(rng, size=(37, 53)):
    return rng.randint(0, 65536, size=size, dtype=np.uint16)


def _to8(values16):
    return np.floor(values16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def _cases(rng):
    rgb = rng.randint(0, 256, size=(37, 53, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, rng.randint(0, 256, size=(37, 53, 1), dtype=np.uint8)], axis=2)
    g16 = _gray16(rng)
    rgb16 = rng.randint(0, 65536, size=(37, 53, 3), dtype=np.uint16)
    floats = rng.rand(37, 53, 3)
    palette = Image.fromarray(rgb).quantize(colors=16)
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    return {
        "numpy rgb": (rgb, rgb),
        "numpy gray": (gray, gray3),
        "numpy gray hw1": (gray[..., None], gray3),
        "numpy rgba": (rgba, rgb),
        "numpy uint16 gray": (g16, np.repeat(_to8(g16)[..., None], 3, axis=2)),
        "numpy uint16 rgb": (rgb16, _to8(rgb16)),
        "numpy float": (floats, np.floor(floats * 255 + 0.5).astype(np.uint8)),
        "numpy float32": (floats.astype(np.float32), np.floor(floats.astype(np.float32).astype(np.float64) * 255 + 0.5).astype(np.uint8)),
        "numpy bool": (gray > 127, np.repeat(((gray > 127) * 255).astype(np.uint8)[..., None], 3, axis=2)),
        "pil rgb": (Image.fromarray(rgb), rgb),
        "pil L": (Image.fromarray(gray), gray3),
        "pil RGBA": (Image.fromarray(rgba), rgb),
        "pil P": (palette, np.asarray(palette.convert("RGB"))),
        "pil I;16": (Image.fromarray(g16), np.repeat(_to8(g16)[..., None], 3, axis=2)),
        "pil I": (Image.fromarray(g16.astype(np.int32)), np.repeat(_to8(g16)[..., None], 3, axis=2)),
        "pil F": (Image.fromarray(floats[..., 0].astype(np.float32)), np.repeat(np.floor(floats[..., 0].astype(np.float32).astype(np.float64) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)),
        "torch chw uint8": (torch.from_numpy(rgb).permute(2, 0, 1), rgb),
        "torch hw uint8": (torch.from_numpy(gray), gray3),
        "torch 1hw float": (torch.from_numpy(floats[..., 0]).float()[None], np.repeat(np.floor(floats[..., 0].astype(np.float32).astype(np.float64) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)),
        "torch chw uint16": (torch.from_numpy(rgb16.astype(np.int32)).permute(2, 0, 1).to(torch.uint16), _to8(rgb16)),
    }


@pytest.mark.parametrize("kind", list(_cases(np.random.RandomState(1))))
@pytest.mark.parametrize("longest_edge", [128, 64])
def test_every_input_kind_matches_meta_on_its_rgb(kind, longest_edge, meta_pixel_values):
    image, meta_rgb = _cases(np.random.RandomState(1))[kind]
    out = SamHfImageProcessor(longest_edge=longest_edge)(image)
    _exact(out["pixel_values"], meta_pixel_values(meta_rgb, longest_edge))
    assert out["original_sizes"].tolist() == [[37, 53]]


def test_batched_arrays_are_batches(rng):
    rgb = rng.randint(0, 256, size=(2, 20, 30, 3), dtype=np.uint8)
    a = SamHfImageProcessor(longest_edge=64)(rgb)
    b = SamHfImageProcessor(longest_edge=64)(torch.from_numpy(rgb).permute(0, 3, 1, 2))
    c = SamHfImageProcessor(longest_edge=64)([rgb[0], rgb[1]])
    _exact(a["pixel_values"], b["pixel_values"])
    _exact(a["pixel_values"], c["pixel_values"])
    assert a["pixel_values"].shape == (2, 3, 64, 64)


def test_return_numpy(rng):
    out = SamHfImageProcessor(longest_edge=64)(rng.randint(0, 256, size=(20, 30, 3), dtype=np.uint8), return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].dtype == np.float32


def test_matches_transformers_pil_image_processor(rng):
    # transformers normalizes (x / 255 - mean01) / std01 instead of (x - mean) / std: equal up to float rounding.
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    theirs_processor = SamImageProcessorPil(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    for size in [(333, 517), (517, 333), (129, 127)]:
        rgb = rng.randint(0, 256, size=(*size, 3), dtype=np.uint8)
        ours = SamHfImageProcessor(longest_edge=256)(rgb)
        theirs = theirs_processor(rgb, return_tensors="pt")
        assert ours["original_sizes"].tolist() == theirs["original_sizes"].tolist()
        assert ours["reshaped_input_sizes"].tolist() == theirs["reshaped_input_sizes"].tolist()
        torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    processor = SamHfImageProcessor(longest_edge=256, pixel_mean=[1.0, 2.0, 3.0], pixel_std=[4.0, 5.0, 6.0])
    processor.save_pretrained(tmp_path)
    loaded = SamHfImageProcessor.from_pretrained(tmp_path)
    assert (loaded.longest_edge, loaded.pixel_mean, loaded.pixel_std) == (256, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert loaded.to_dict() == processor.to_dict()
    assert SamHfImageProcessor.from_pretrained(tmp_path, longest_edge=512).longest_edge == 512
