"""`image_cache`: the decoder's prompt-independent work on one image, computed in the first call on the embeddings and
reused by the next ones, refilled when the embeddings, the positional encoding or the decoder's weights change."""

import pytest
import torch

from references import randomize
from sam_hf import SamHfModel, config_for_variant
from sam_hf.modeling import decoder_attention, mask_decoder


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return randomize(SamHfModel(config_for_variant("tiny")), seed=3).eval()


def _embeddings(seed=0):
    return torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(seed))


def _points(seed, prompts=5):
    return torch.rand(1, prompts, 1, 2, generator=torch.Generator().manual_seed(100 + seed)) * 128


def _counted(monkeypatch):
    """Counts the decoder's prompt-independent work: the channels-last image tokens, and projections of a whole
    image side (rows of the 8 x 8 grid) by the attentions."""
    counts = {"tokens": 0, "projections": 0}
    tokens, project = mask_decoder.channels_last_tokens, decoder_attention.SamHfAttention.project

    def counted_tokens(*args):
        counts["tokens"] += 1
        return tokens(*args)

    def counted_project(layer, states, pe=None):
        counts["projections"] += states.shape[-2] == 64
        return project(layer, states, pe)

    monkeypatch.setattr(mask_decoder, "channels_last_tokens", counted_tokens)
    monkeypatch.setattr(decoder_attention.SamHfAttention, "project", staticmethod(counted_project))
    return counts


def _same(got, expected):
    assert torch.equal(got.iou_scores, expected.iou_scores)
    assert torch.equal(got.pred_masks, expected.pred_masks)


@pytest.mark.parametrize("threshold", [None, 0.0])
@torch.inference_mode()
def test_calls_with_the_cache_equal_calls_without_and_do_the_work_once(model, decoder_path, monkeypatch, threshold):
    embeddings, cache = _embeddings(), {}
    expected = [model(image_embeddings=embeddings, input_points=_points(seed), mask_iou_threshold=threshold) for seed in range(3)]
    counts = _counted(monkeypatch)
    for seed in range(3):
        _same(model(image_embeddings=embeddings, input_points=_points(seed), image_cache=cache, mask_iou_threshold=threshold), expected[seed])
    assert counts["tokens"] == 1 and counts["projections"] > 0
    first = dict(counts)
    _same(model(image_embeddings=embeddings, input_points=_points(0), image_cache=cache, mask_iou_threshold=threshold), expected[0])
    assert counts == first  # nothing image-wide computed again


@torch.inference_mode()
def test_refilled_for_other_embeddings(model, decoder_path, monkeypatch):
    cache = {}
    model(image_embeddings=_embeddings(0), input_points=_points(0), image_cache=cache)
    other = _embeddings(1)
    expected = model(image_embeddings=other, input_points=_points(1))
    counts = _counted(monkeypatch)
    _same(model(image_embeddings=other, input_points=_points(1), image_cache=cache), expected)
    assert counts["tokens"] == 1


def test_refilled_when_embeddings_weights_or_positions_change(model, decoder_path):
    embeddings, cache, points = _embeddings(), {}, _points(2)
    with torch.no_grad():
        model(image_embeddings=embeddings, input_points=points, image_cache=cache)
        embeddings.mul_(2.0)  # a tensor made outside inference mode: its version counter moves
        _same(model(image_embeddings=embeddings, input_points=points, image_cache=cache), model(image_embeddings=embeddings, input_points=points))
        model.mask_decoder.transformer.layers[0].cross_attn_image_to_token.q_proj.weight.mul_(1.5)
        _same(model(image_embeddings=embeddings, input_points=points, image_cache=cache), model(image_embeddings=embeddings, input_points=points))
        weight = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.v_proj.weight  # its projection is kept
        weight.data = weight.data * 0.5  # swapped, as `module.to(...)` and state-dict tricks do: no version bump
        _same(model(image_embeddings=embeddings, input_points=points, image_cache=cache), model(image_embeddings=embeddings, input_points=points))
        model.shared_image_embedding.positional_embedding.mul_(0.5)  # another positional encoding of the grid
        _same(model(image_embeddings=embeddings, input_points=points, image_cache=cache), model(image_embeddings=embeddings, input_points=points))


@torch.inference_mode()
def test_mask_inputs_keep_their_own_image_side(model, decoder_path):
    """With a mask per prompt the image tokens differ per prompt: not kept, and each call is still exact."""
    embeddings, cache = _embeddings(), {}
    for seed in range(2):
        masks = torch.randn(1, 5, 32, 32, generator=torch.Generator().manual_seed(seed))
        expected = model(image_embeddings=embeddings, input_points=_points(seed), input_masks=masks)
        _same(model(image_embeddings=embeddings, input_points=_points(seed), input_masks=masks, image_cache=cache), expected)
    _same(model(image_embeddings=embeddings, input_points=_points(3), image_cache=cache), model(image_embeddings=embeddings, input_points=_points(3)))


def test_not_used_where_autograd_records(model):
    """A cached projection would carry one call's graph into the next: with grad on, every call keeps its own work."""
    embeddings, cache = _embeddings(), {}
    for seed in range(2):
        out = model(image_embeddings=embeddings, input_points=_points(seed), image_cache=cache)
        out.pred_masks.sum().backward()
        assert cache == {}
    assert model.mask_decoder.iou_token.weight.grad is not None


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="image_cache must be a dict"):
        model(image_embeddings=_embeddings(), input_points=_points(0), image_cache=[])
    with pytest.raises(ValueError, match="image_cache keeps work on given image_embeddings"):
        model(pixel_values=torch.zeros(1, 3, 128, 128), input_points=_points(0), image_cache={})
