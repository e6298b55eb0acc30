"""post_process_masks against Meta's Sam.postprocess_masks and transformers; ground truth to the low-res frame."""
import numpy as np
import pytest
import torch

from sam_hf.processing import SamHfImageProcessor, get_preprocess_shape

SIZES = [(333, 517), (517, 333), (129, 127), (1, 7), (128, 128)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("longest_edge", [128, 256])
def test_post_process_matches_meta(size, longest_edge, meta_sam):
    low = longest_edge // 4
    logits = torch.randn(2, 3, low, low) * 4  # (P, M, L, L)
    input_size = get_preprocess_shape(*size, longest_edge)
    expected = meta_sam(longest_edge).postprocess_masks(logits, input_size, size)  # (P, M, H, W)
    processor = SamHfImageProcessor(longest_edge=longest_edge)
    ours = processor.post_process_masks(logits[None], [size], [input_size], binarize=False)
    assert len(ours) == 1 and ours[0].shape == (2, 3, *size)
    torch.testing.assert_close(ours[0], expected, rtol=0, atol=0)
    binary = processor.post_process_masks(logits[None], torch.tensor([size]), torch.tensor([input_size]))[0]
    assert binary.dtype == torch.bool
    assert torch.equal(binary, expected > 0.0)
    raised = processor.post_process_masks(logits[None], [size], [input_size], mask_threshold=1.5)[0]
    assert torch.equal(raised, expected > 1.5)


@pytest.mark.parametrize("size", [(683, 1024), (1024, 683), (300, 1024)])
def test_post_process_only_upscales_the_kept_rows_bit_exactly(size, meta_sam):
    """SAM's own frame (1024, low-res 256): the rows below the image are never computed, with no change."""
    logits = torch.randn(1, 3, 256, 256) * 8
    input_size = get_preprocess_shape(*size, 1024)
    expected = meta_sam(1024).postprocess_masks(logits, input_size, size)
    ours = SamHfImageProcessor(longest_edge=1024).post_process_masks(logits[None], [size], [input_size], binarize=False)[0]
    assert torch.equal(ours, expected)


def test_post_process_batch_of_sizes_and_ragged_prompts():
    processor = SamHfImageProcessor(longest_edge=128)
    sizes = [(50, 90), (129, 127)]
    reshaped = [get_preprocess_shape(*s, 128) for s in sizes]
    masks = [torch.randn(1, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = processor.post_process_masks(masks, sizes, reshaped, binarize=False)
    assert [tuple(m.shape) for m in out] == [(1, 3, 50, 90), (4, 3, 129, 127)]
    alone = processor.post_process_masks(masks[1][None], sizes[1:], reshaped[1:], binarize=False)[0]
    torch.testing.assert_close(out[1], alone)


def test_post_process_matches_transformers():
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    theirs = SamImageProcessorPil(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    ours = SamHfImageProcessor(longest_edge=256)
    sizes = [(333, 517), (129, 127)]
    reshaped = [get_preprocess_shape(*s, 256) for s in sizes]
    masks = torch.randn(2, 2, 3, 64, 64)  # (B, P, M, L, L)
    for binarize in (True, False):
        a = ours.post_process_masks(masks, sizes, reshaped, binarize=binarize)
        b = theirs.post_process_masks(list(masks), sizes, reshaped, binarize=binarize)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y)


def test_numpy_logits_accepted():
    processor = SamHfImageProcessor(longest_edge=128)
    logits = np.random.RandomState(0).randn(1, 1, 3, 32, 32).astype(np.float32)
    out = processor.post_process_masks(logits, [[40, 60]], [[85, 128]], binarize=False)
    torch.testing.assert_close(out[0], processor.post_process_masks(torch.from_numpy(logits), [[40, 60]], [[85, 128]], binarize=False)[0])


@pytest.mark.parametrize(
    "masks, sizes, reshaped, fragment",
    [
        (torch.zeros(1, 3, 32, 32), [[40, 60]], [[85, 128]], "(B, P, M, L, L)"),
        (torch.zeros(2, 1, 3, 32, 32), [[40, 60]], [[85, 128]], "one (H, W) per image"),
        (torch.zeros(1, 1, 3, 32, 32), [[40, 0]], [[85, 128]], "original_sizes[0]"),
        (torch.zeros(1, 1, 3, 32, 32), [[40, 60]], [[85, 129]], "reshaped_input_sizes[0]"),
        (torch.zeros(1, 1, 3, 32, 32), [40, 60], [[85, 128]], "original_sizes"),
        (torch.zeros(1, 1, 3, 32, 32), [[float("inf"), 60]], [[85, 128]], "original_sizes[0]"),
        (torch.zeros(1, 1, 3, 32, 32), [[float("nan"), 60]], [[85, 128]], "original_sizes[0]"),
        (torch.zeros(1, 1, 3, 0, 0), [[40, 60]], [[85, 128]], "L >= 1"),
    ],
)
def test_post_process_bad_input(masks, sizes, reshaped, fragment):
    with pytest.raises(ValueError) as info:
        SamHfImageProcessor(longest_edge=128).post_process_masks(masks, sizes, reshaped)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "options, masks, fragment",
    [
        (dict(pad_size=128.0), None, "pad_size must be a positive int"),
        (dict(pad_size={"height": 128, "width": 96}), None, "pad_size must be a positive int"),
        (dict(mask_threshold="0"), None, "mask_threshold must be a number"),
        (dict(mask_threshold=None), None, "mask_threshold must be a number"),
        (dict(binarize="no"), None, "binarize must be a bool"),
        ({}, torch.zeros(1, 1, 3, 32, 32, dtype=torch.complex64), "floating-point logits"),
        ({}, torch.zeros(1, 1, 3, 32, 32, dtype=torch.int64), "floating-point logits"),
    ],
)
def test_post_process_bad_options(options, masks, fragment):
    masks = torch.zeros(1, 1, 3, 32, 32) if masks is None else masks
    with pytest.raises(TypeError, match=fragment):
        SamHfImageProcessor(longest_edge=128).post_process_masks(masks, [[40, 60]], [[85, 128]], **options)


@pytest.mark.parametrize("binarize", [True, False])
def test_post_process_no_prompt_or_no_mask(binarize):
    """P = 0 or M = 0: empty masks at the original size, in the dtype the non-empty case gives."""
    processor = SamHfImageProcessor(longest_edge=128)
    full = processor.post_process_masks(torch.zeros(1, 1, 3, 32, 32), [[40, 60]], [[85, 128]], binarize=binarize)[0]
    for shape in ((1, 0, 3, 32, 32), (1, 2, 0, 32, 32)):
        out = processor.post_process_masks(torch.zeros(shape), [[40, 60]], [[85, 128]], binarize=binarize)[0]
        assert out.shape == (*shape[1:3], 40, 60) and out.dtype == full.dtype


# --- ground truth -> low-res frame ----------------------------------------------------------------------------


def test_full_mask_covers_the_resized_image_in_low_res():
    # (300, 400) -> (96, 128) at S = 128; the low-res frame is S / 4 = 32: the image covers [:24, :32].
    processor = SamHfImageProcessor(longest_edge=128)
    low = processor.preprocess_masks(np.ones((300, 400), dtype=bool))
    assert low.shape == (1, 32, 32) and low.dtype == torch.float32
    expected = torch.zeros(1, 32, 32)
    expected[:, :24, :32] = 1
    torch.testing.assert_close(low, expected)


def test_low_res_round_trip_recovers_the_mask():
    processor = SamHfImageProcessor(longest_edge=256)
    yy, xx = np.mgrid[:333, :517]
    gt = ((yy - 150) ** 2 / 90**2 + (xx - 260) ** 2 / 160**2) < 1  # an ellipse, (H, W) bool
    low = processor.preprocess_masks([gt[None], gt[None, :200]])  # list: one (K, H, W) per image
    assert [tuple(m.shape) for m in low] == [(1, 64, 64), (1, 64, 64)]
    logits = (low[0] * 2 - 1) * 10  # (1, L, L) pseudo logits
    back = processor.post_process_masks(logits[None, None], [(333, 517)], [get_preprocess_shape(333, 517, 256)])[0][0, 0]
    iou = (back.numpy() & gt).sum() / (back.numpy() | gt).sum()
    assert iou > 0.97
    soft = processor.preprocess_masks(gt.astype(np.float32), binarize=False)
    assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0) & (soft < 1)).any()
    torch.testing.assert_close((soft > 0.5).float(), processor.preprocess_masks(gt))


@pytest.mark.parametrize(
    "mask, error, fragment",
    [
        (np.full((10, 10), 2), ValueError, "0/1"),
        (np.full((10, 10), 1.5, dtype=np.float32), ValueError, "[0, 1]"),
        (np.zeros((2, 3, 10, 10)), ValueError, "(K, H, W)"),
        (np.zeros((1, 0, 10)), ValueError, "empty"),
        ([[0, 1], [1, 0]], TypeError, "masks[0]"),
        ([], ValueError, "at least one"),
    ],
)
def test_preprocess_masks_bad_input(mask, error, fragment):
    with pytest.raises(error) as info:
        SamHfImageProcessor(longest_edge=128).preprocess_masks(mask)
    assert fragment in str(info.value)


def test_post_process_takes_transformers_pad_size():
    processor = SamHfImageProcessor(longest_edge=128)
    logits = torch.randn(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = processor.post_process_masks(logits, [[40, 60]], [[85, 128]])[0]
    torch.testing.assert_close(processor.post_process_masks(logits, [[40, 60]], [[85, 128]], pad_size={"height": 128, "width": 128})[0], expected)


def test_ground_truth_lands_in_the_models_low_res_frame_for_any_patch_size(tmp_path):
    """The low-resolution side is 4 x the embedding grid (S / patch): S / 2 for 8-pixel patches, as the shipped model's.
    The processor a model saves (and `for_model`) knows it, so `preprocess_masks` output feeds `input_masks`."""
    from sam_hf import SamHfModel, SamHfProcessor, config_for_variant

    torch.manual_seed(0)
    model = SamHfModel(config_for_variant("tiny", image_size=64)).eval()
    config = model.config
    config.vision_config.patch_size = config.prompt_encoder_config.patch_size = 8
    model = SamHfModel(config).eval()
    assert model.config.prompt_encoder_config.mask_input_size == 32 == 64 // 2
    model.save_pretrained(tmp_path)
    for processor in (SamHfImageProcessor.for_model(model.config), SamHfProcessor.from_pretrained(tmp_path).image_processor):
        assert processor.low_res_size == 32
        truth = np.zeros((40, 60), bool)
        truth[10:30, 20:50] = True
        low = processor.preprocess_masks(truth)
        assert low.shape == (1, 32, 32)
        with torch.no_grad():
            out = model(pixel_values=torch.zeros(1, 3, 64, 64), input_points=torch.tensor([[[[30.0, 20.0]]]]), input_masks=low[None])
        assert out.pred_masks.shape == (1, 1, 3, 32, 32)
    assert SamHfImageProcessor(longest_edge=64).low_res_size == 16  # without it: 16-pixel patches
