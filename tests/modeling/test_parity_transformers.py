"""sam_hf equals transformers' SamModel on identical random weights (same state dict, same names)."""

import pytest
import torch
from torch.testing import assert_close

from references import transformers_from_ours
from sam_hf import SamHfModel, config_for_variant

pytestmark = pytest.mark.usefixtures("decoder_path")  # with and without the compiled decoder kernel


@torch.no_grad()
def test_vit_b_encoder_matches_transformers():
    """The real ViT-B geometry once: 1024 input, 64x64 grid, windows of 14 padded to 70, 4 global blocks."""
    torch.manual_seed(0)
    model = SamHfModel(config_for_variant("vit_b")).eval()
    for name, param in model.named_parameters():  # exercise the zero-initialised position tables too
        if "rel_pos" in name or "pos_embed" in name:
            param.normal_(std=0.1)
    reference = transformers_from_ours(model)
    pixels = torch.randn(1, 3, 1024, 1024)
    ours = model.get_image_embeddings(pixels)
    assert ours.shape == (1, 256, 64, 64)
    assert_close(ours, reference.get_image_embeddings(pixels), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_points_batched_images_match_transformers(tiny_model, transformers_tiny, multimask):
    pixels = torch.randn(2, 3, 128, 128)
    points = torch.rand(2, 3, 2, 2) * 128  # (B, P, N, 2)
    labels = torch.randint(0, 2, (2, 3, 2))
    ours = tiny_model(pixels, input_points=points, input_labels=labels, multimask_output=multimask)
    ref = transformers_tiny(pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=multimask)
    assert ours.pred_masks.shape == ref.pred_masks.shape == (2, 3, 3 if multimask else 1, 32, 32)
    assert_close(ours.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores, ref.iou_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_points", [False, True])
@torch.no_grad()
def test_boxes_and_masks_match_transformers(tiny_model, transformers_tiny, with_points):
    embeddings = torch.randn(2, 32, 8, 8)
    boxes = torch.sort(torch.rand(2, 4, 2, 2) * 128, dim=2).values.reshape(2, 4, 4)  # (B, P, 4)
    masks = torch.randn(2, 1, 32, 32)  # one per image, transformers' convention
    points = torch.rand(2, 4, 1, 2) * 128 if with_points else None
    labels = torch.ones(2, 4, 1, dtype=torch.long) if with_points else None
    ours = tiny_model(image_embeddings=embeddings, input_boxes=boxes, input_masks=masks, input_points=points, input_labels=labels)
    ref = transformers_tiny(image_embeddings=embeddings, input_boxes=boxes, input_masks=masks, input_points=points, input_labels=labels)
    assert_close(ours.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores, ref.iou_scores, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_image_wide_positional_embeddings_match_transformers(tiny_model, transformers_tiny):
    assert_close(tiny_model.get_image_wide_positional_embeddings(), transformers_tiny.get_image_wide_positional_embeddings()[0])


@pytest.mark.parametrize("hidden", [False, True])
@torch.no_grad()
def test_tuple_outputs_unpack_as_transformers(tiny_model, transformers_tiny, hidden):
    """`return_dict=False` gives transformers' tuple: iou_scores, pred_masks, then the optional fields it has, in its
    order (sam_hf's extra image_embeddings field stays in the dict form only)."""
    pixels, points = torch.randn(1, 3, 128, 128), torch.rand(1, 2, 1, 2) * 128
    ours = tiny_model(pixels, input_points=points, return_dict=False, output_hidden_states=hidden)
    ref = transformers_tiny(pixel_values=pixels, input_points=points, return_dict=False, output_hidden_states=hidden)
    assert len(ours) == len(ref) == (3 if hidden else 2)
    for a, b in zip(ours[:2], ref[:2]):
        assert_close(a, b, rtol=1e-4, atol=1e-4)
    if hidden:
        assert len(ours[2]) == len(ref[2]) and all(a.shape == b.shape for a, b in zip(ours[2], ref[2]))
    assert tiny_model(pixels, input_points=points).image_embeddings.shape == (1, 32, 8, 8)


def test_image_embeddings_keep_no_graph_as_transformers(tiny_model, transformers_tiny):
    pixels = torch.randn(1, 3, 128, 128)
    ours, ref = tiny_model.get_image_embeddings(pixels), transformers_tiny.get_image_embeddings(pixels)
    assert not ours.requires_grad and not ref.requires_grad
    assert tiny_model.get_image_features(pixels).image_embeddings.requires_grad  # the route that trains the encoder


@pytest.mark.parametrize("prompts", ["points", "boxes", "all", "masks", "none"])
@torch.no_grad()
def test_prompt_embeddings_match_transformers(tiny_model, transformers_tiny, prompts):
    points = torch.rand(2, 3, 2, 2) * 128
    labels = torch.tensor([[[1, 0], [1, -10], [0, 1]]] * 2)  # with a padding slot
    boxes = torch.sort(torch.rand(2, 3, 2, 2) * 128, dim=2).values.reshape(2, 3, 4)
    masks = torch.randn(2, 1, 32, 32)
    given = {
        "points": dict(input_points=points, input_labels=labels), "boxes": dict(input_boxes=boxes),
        "all": dict(input_points=points, input_labels=labels, input_boxes=boxes, input_masks=masks),
        "masks": dict(input_masks=masks), "none": {},
    }[prompts]
    ours, ref = tiny_model.get_prompt_embeddings(**given), transformers_tiny.get_prompt_embeddings(**given)
    assert (ours[0] is None) == (ref[0] is None) == (prompts in ("masks", "none"))
    if ref[0] is not None:
        assert_close(ours[0], ref[0])
    assert ours[1].shape == ref[1].shape == ((1 if prompts == "none" else 2), 32, 8, 8)
    assert_close(ours[1], ref[1])


def test_prompt_embeddings_keep_no_graph_as_transformers(tiny_model, transformers_tiny):
    points = torch.rand(1, 2, 1, 2) * 128
    ours, ref = tiny_model.get_prompt_embeddings(input_points=points), transformers_tiny.get_prompt_embeddings(points, torch.ones(1, 2, 1))
    assert all(t.grad_fn is None for t in (*ours, *ref))  # the dense one is a view of a weight: no graph either
    assert [t.requires_grad for t in ours] == [t.requires_grad for t in ref] == [False, True]


def test_masked_keys_in_attention_similarity(tiny_model, transformers_tiny):
    """-inf in attention_similarity leaves those image tokens out of the token -> image attentions, as in transformers."""
    similarity = torch.zeros(1, 1, 1, 64)
    similarity[..., ::3] = float("-inf")
    inputs = dict(image_embeddings=torch.randn(1, 32, 8, 8), input_points=torch.rand(1, 2, 1, 2) * 128, attention_similarity=similarity)
    with torch.no_grad():
        ours, ref = tiny_model(**inputs), transformers_tiny(**{k: v.clone() for k, v in inputs.items()})
    assert_close(ours.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)


def test_prompt_embeddings_check_their_prompts(tiny_model):
    with pytest.raises(ValueError, match="input_points must have shape"):
        tiny_model.get_prompt_embeddings(input_points=torch.rand(2, 2))
    with pytest.raises(TypeError, match="input_boxes must be a torch.Tensor"):
        tiny_model.get_prompt_embeddings(input_boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="input_boxes has 1 images"):
        tiny_model.get_prompt_embeddings(input_points=torch.rand(2, 1, 1, 2), input_boxes=torch.rand(1, 1, 4))


def _persam_inputs(kind: str, batch: int, prompts: int, tokens: int, heads: int, seed: int = 3) -> dict:
    generator = torch.Generator().manual_seed(seed)
    similarity = {"one map": (1, 1, 1, 64), "per prompt and head": (batch * prompts, heads, tokens, 64)}
    target = {"one vector": (1, 1, 1, 32), "per token": (batch, prompts, tokens, 32)}
    given = {}
    if kind in similarity or kind == "both":
        given["attention_similarity"] = 3 * torch.randn(similarity.get(kind, (1, 1, 1, 64)), generator=generator)
    if kind in target or kind == "both":
        given["target_embedding"] = torch.randn(target.get(kind, (1, 1, 1, 32)), generator=generator)
    return given


@pytest.mark.parametrize("kind", ["one map", "per prompt and head", "one vector", "per token", "both"])
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_persam_inputs_match_transformers(tiny_model, transformers_tiny, kind, multimask):
    """PerSAM's attention_similarity (added to each block's token -> image logits) and target_embedding (added to the
    tokens before each block, and, as transformers adds it in place, to their positional encoding from the first on)."""
    embeddings = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(1))
    points = torch.rand(2, 3, 2, 2, generator=torch.Generator().manual_seed(2)) * 128
    labels = torch.tensor([[[1, 0], [1, 1], [0, 1]]] * 2)
    heads = tiny_model.config.mask_decoder_config.num_attention_heads
    given = _persam_inputs(kind, 2, 3, 1 + 4 + 3, heads)  # IoU token, 4 mask tokens, 2 points and Meta's padding point
    inputs = dict(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=multimask)
    ours = tiny_model(**inputs, **given)
    ref = transformers_tiny(**inputs, **{name: value.clone() for name, value in given.items()})  # it adds in place
    plain = tiny_model(**inputs)
    assert_close(ours.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    assert_close(ours.iou_scores, ref.iou_scores, rtol=1e-4, atol=1e-4)
    assert (ours.pred_masks - plain.pred_masks).abs().max() > 0.05  # the inputs change the masks
    skipped = tiny_model(**inputs, **given, mask_iou_threshold=float("-inf"))  # segment everything's route
    assert_close(skipped.pred_masks, ours.pred_masks, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "given,error,words",
    [
        (dict(attention_similarity=torch.zeros(4, 1, 1, 64)), ValueError, r"attention_similarity must be broadcastable to \(B\*P, heads, T, HW\)"),
        (dict(attention_similarity=torch.zeros(1, 1, 1, 1, 64)), ValueError, "attention_similarity must be broadcastable"),
        (dict(attention_similarity=torch.zeros(1, 64, dtype=torch.long)), TypeError, "attention_similarity must be a floating-point"),
        (dict(target_embedding=torch.zeros(1, 1, 1, 16)), ValueError, r"target_embedding must be broadcastable to the tokens \(B, P, T, C\)"),
        (dict(target_embedding=[0.0] * 32), TypeError, "target_embedding must be a torch.Tensor"),
        (dict(target_embedding=torch.full((32,), float("inf"))), ValueError, "target_embedding must contain only finite"),
        (dict(attention_similarity=torch.full((64,), float("nan"))), ValueError, r"attention_similarity must hold numbers below \+inf"),
        (dict(attention_similarity=torch.full((64,), float("inf"))), ValueError, r"attention_similarity must hold numbers below \+inf"),
    ],
)
def test_bad_persam_inputs(tiny_model, given, error, words):
    with pytest.raises(error, match=words):
        tiny_model(image_embeddings=torch.randn(1, 32, 8, 8), input_points=torch.rand(1, 2, 1, 2) * 128, **given)
