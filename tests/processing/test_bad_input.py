"""Every bad input raises ValueError/TypeError naming the argument; nothing is silently corrected."""
import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf.processing import SamHfImageProcessor, SamHfProcessor

IMG = np.zeros((30, 40, 3), dtype=np.uint8)
P1 = [[[[1, 2]]]]  # one image, one prompt, one point

BAD_CALLS = {
    # images
    "no images": (dict(images=None, input_points=P1), ValueError, "images"),
    "empty list": (dict(images=[]), ValueError, "at least one image"),
    "zero height": (dict(images=np.zeros((0, 5, 3), np.uint8)), ValueError, "empty"),
    "zero width pil": (dict(images=Image.new("RGB", (0, 4))), ValueError, "empty"),
    "two channels": (dict(images=np.zeros((5, 5, 2), np.uint8)), ValueError, "(H, W, 3)"),
    "5-d array": (dict(images=np.zeros((1, 1, 5, 5, 3), np.uint8)), ValueError, "shape"),
    "torch hwc": (dict(images=torch.zeros(30, 40, 3, dtype=torch.uint8)), ValueError, "channels first"),
    "int64 array": (dict(images=np.zeros((5, 5, 3), np.int64)), TypeError, "uint8"),
    "float above 1": (dict(images=np.full((5, 5, 3), 2.0)), ValueError, "[0, 1]"),
    "float nan": (dict(images=np.full((5, 5, 3), np.nan)), ValueError, "finite"),
    "string": (dict(images="cat.png"), TypeError, "images"),
    "list of strings": (dict(images=["cat.png"]), TypeError, "images[0]"),
    "pil I out of range": (dict(images=Image.fromarray(np.full((4, 4), 70000, np.int32))), ValueError, "0..65535"),
    "too thin": (dict(images=np.zeros((1, 500, 3), np.uint8)), ValueError, "zero pixels"),
    # points
    "points two levels": (dict(images=IMG, input_points=[[1, 2]]), ValueError, "input_points"),
    "points five levels": (dict(images=IMG, input_points=[[[[[1, 2]]]]]), ValueError, "input_points"),
    "point with 3 coords": (dict(images=IMG, input_points=[[[[1, 2, 3]]]]), ValueError, "input_points[0][0][0]"),
    "point nan": (dict(images=IMG, input_points=[[[[1, float("nan")]]]]), ValueError, "input_points[0][0][0]"),
    "point inf": (dict(images=IMG, input_points=np.array([[[[np.inf, 2.0]]]])), ValueError, "finite"),
    "point string": (dict(images=IMG, input_points=[[[["1", 2]]]]), TypeError, "input_points"),
    "empty prompt": (dict(images=IMG, input_points=[[[]]]), ValueError, "input_points"),
    "mixed depth": (dict(images=IMG, input_points=[[[[1, 2]], [3, 4]]]), ValueError, "input_points[0][1]"),
    "points per image mismatch": (dict(images=IMG, input_points=[[[1, 2]], [[3, 4]]]), ValueError, "one entry per image"),
    # labels
    "label 2": (dict(images=IMG, input_points=P1, input_labels=[[[2]]]), ValueError, "input_labels[0][0]"),
    "label -10 from user": (dict(images=IMG, input_points=P1, input_labels=[[[-10]]]), ValueError, "{1, 0, -1}"),
    "label 0.5": (dict(images=IMG, input_points=P1, input_labels=[[[0.5]]]), ValueError, "input_labels"),
    "label bool": (dict(images=IMG, input_points=P1, input_labels=[[[True]]]), TypeError, "input_labels"),
    "labels count": (dict(images=IMG, input_points=P1, input_labels=[[[1, 0]]]), ValueError, "one label per point"),
    "labels prompts": (dict(images=IMG, input_points=P1, input_labels=[[[1], [0]]]), ValueError, "one entry per prompt"),
    "labels without points": (dict(images=IMG, input_labels=[[[1]]]), ValueError, "input_labels"),
    # boxes
    "box x1 < x0": (dict(images=IMG, input_boxes=[[[10, 0, 5, 5]]]), ValueError, "x0 <= x1"),
    "box y1 < y0": (dict(images=IMG, input_boxes=[[[0, 10, 5, 5]]]), ValueError, "input_boxes[0][0]"),
    "box three numbers": (dict(images=IMG, input_boxes=[[[0, 0, 5]]]), ValueError, "4 numbers"),
    "box two levels": (dict(images=IMG, input_boxes=[[0, 0, 5, 5]]), ValueError, "[image][box]"),
    "box nan": (dict(images=IMG, input_boxes=[[[0, 0, float("nan"), 5]]]), ValueError, "finite"),
    "boxes per image mismatch": (dict(images=[IMG, IMG], input_boxes=[[[0, 0, 5, 5]]]), ValueError, "one entry per image"),
    "points and boxes disagree": (dict(images=IMG, input_points=P1, input_boxes=[[[0, 0, 1, 1], [0, 0, 2, 2]]]), ValueError, "same prompts"),
    # call
    "unknown argument": (dict(images=IMG, text="a cat"), TypeError, "unexpected arguments ['text']"),
    "bad return_tensors": (dict(images=IMG, return_tensors="tf"), ValueError, "return_tensors"),
    "images and sizes": (dict(images=IMG, original_sizes=[(30, 40)]), ValueError, "original_sizes"),
    "bad sizes": (dict(original_sizes=[(30, 0)], input_points=P1), ValueError, "original_sizes[0]"),
    "size too thin": (dict(original_sizes=[(1, 1000)], input_points=P1), ValueError, "original_sizes[0] = (1, 1000)"),
    "second image too thin": (dict(images=[IMG, np.zeros((1, 500, 3), np.uint8)]), ValueError, "images[1]: an image"),
    "infinite size": (dict(original_sizes=[(float("inf"), 40)], input_points=P1), ValueError, "original_sizes[0]"),
    "string size": (dict(original_sizes=[("a", 40)], input_points=P1), ValueError, "original_sizes[0]"),
    "point beyond float32": (dict(images=IMG, input_points=[[[[1e39, 2]]]]), ValueError, "float32's range"),
    "point int beyond float": (dict(images=IMG, input_points=[[[[10**400, 2]]]]), ValueError, "input_points[0][0][0]"),
    "point array of strings": (dict(images=IMG, input_points=np.array([[[["1", "2"]]]])), TypeError, "input_points"),
    "point complex tensor": (dict(images=IMG, input_points=torch.zeros(1, 1, 1, 2, dtype=torch.complex64)), TypeError, "input_points"),
    "box object array": (dict(images=IMG, input_boxes=np.array([[[0, 0, "a", 1]]], dtype=object)), TypeError, "input_boxes"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_call_raises(case):
    kwargs, error, fragment = BAD_CALLS[case]
    processor = SamHfProcessor(SamHfImageProcessor(longest_edge=64))
    with pytest.raises(error) as info:
        processor(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(longest_edge=0), ValueError, "longest_edge"),
        (dict(longest_edge=128.0), ValueError, "longest_edge"),
        (dict(pixel_mean=[1, 2]), TypeError, "pixel_mean"),
        (dict(pixel_std=[1, 0, 1]), ValueError, "pixel_std"),
        (dict(pixel_mean=[float("nan"), 1, 2]), ValueError, "pixel_mean must hold finite"),
        (dict(pixel_std=[1, float("inf"), 1]), ValueError, "pixel_std must hold finite"),
        (dict(size={"height": 1024, "width": 1024}), ValueError, "size must be a dict with keys"),
        (dict(size={"longest_edge": 64}, pad_size={"height": 128, "width": 128}), ValueError, "pad_size"),
        (dict(size={"longest_edge": 64}, mask_size={"longest_edge": 16}, mask_pad_size={"height": 32, "width": 32}), ValueError, "mask_pad_size"),
        (dict(longest_edge=64, mask_input_size=48), ValueError, "mask_input_size must be an int that divides longest_edge"),
        (dict(do_normalize=False), ValueError, "do_normalize=False"),
        (dict(resample=3), ValueError, "resample=3"),
        (dict(longest_edge=128, size={"longest_edge": 64}), ValueError, "disagree"),
        (dict(do_reduce_labels=True), TypeError, "do_reduce_labels"),
    ],
)
def test_bad_image_processor_settings(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        SamHfImageProcessor(**kwargs)


def test_processor_needs_our_image_processor():
    with pytest.raises(TypeError, match="image_processor"):
        SamHfProcessor(image_processor=object())


def test_numpy_settings_and_byte_orders_are_read_as_their_values():
    """Numbers given as numpy scalars or arrays, and big-endian arrays (as some files hold them), are the same values."""
    assert SamHfImageProcessor(pixel_mean=np.array([1.0, 2.0, 3.0])).pixel_mean == [1.0, 2.0, 3.0]
    processor = SamHfImageProcessor(longest_edge=64, pixel_std=[np.float32(2), 2, 2])
    native = (np.arange(30 * 40 * 3).reshape(30, 40, 3) * 50).astype("<u2")
    torch.testing.assert_close(processor(native.astype(">u2"))["pixel_values"], processor(native)["pixel_values"], rtol=0, atol=0)
    mask = np.random.default_rng(0).random((30, 40)) > 0.5
    torch.testing.assert_close(processor.preprocess_masks(mask.astype(">f4")), processor.preprocess_masks(mask.astype("<f4")))
    with pytest.raises(TypeError, match="masks must hold bool, integer or float values"):
        processor.preprocess_masks(np.array([["a"]]))


def test_premultiplied_luminance_alpha_image():
    """PIL's "La" (luminance premultiplied by alpha) reads as its "LA" form does."""
    rng = np.random.default_rng(0)
    la = Image.fromarray(np.stack([(rng.random((6, 5)) * 255).astype(np.uint8), np.full((6, 5), 255, np.uint8)], -1), "LA")
    processor = SamHfImageProcessor(longest_edge=64)
    torch.testing.assert_close(processor(la.convert("La"))["pixel_values"], processor(la)["pixel_values"], rtol=0, atol=0)


def test_transformers_processor_folder_loads_as_ours(tmp_path):
    """A transformers `SamProcessor` folder (as `facebook/sam-vit-*` ship) loads into SamHfProcessor with the same
    settings, and both give the same inputs for the same image and prompts."""
    from transformers import SamImageProcessor, SamProcessor

    theirs = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128},
                                                            mask_size={"longest_edge": 32}, mask_pad_size={"height": 32, "width": 32}))
    theirs.save_pretrained(tmp_path)
    ours = SamHfProcessor.from_pretrained(tmp_path)
    assert isinstance(ours.image_processor, SamHfImageProcessor) and ours.longest_edge == 128
    np.testing.assert_allclose(ours.image_processor.pixel_mean, [123.675, 116.28, 103.53], rtol=1e-9)
    np.testing.assert_allclose(ours.image_processor.pixel_std, [58.395, 57.12, 57.375], rtol=1e-9)
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    got = ours(image, input_points=[[[10, 20]]], input_boxes=[[[5, 6, 40, 30]]])
    expected = theirs(image, input_points=[[[10, 20]]], input_boxes=[[[5, 6, 40, 30]]], return_tensors="pt")
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)
    for key in ("input_points", "input_boxes", "original_sizes", "reshaped_input_sizes"):
        torch.testing.assert_close(got[key].double(), expected[key].double())
