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


def test_calls_sharing_a_cache_from_two_threads_take_turns(model, monkeypatch):
    """A call leaves notes in the shared dict while it runs (its route, its passes' records): calls on one dict from
    two threads must not interleave, and each gets what it gets alone. Calls on other dicts still overlap."""
    import threading
    import time

    spans, decode = [], mask_decoder.SamHfMaskDecoder._decode

    def slow_decode(self, *args, **kwargs):  # the GIL is released while sleeping: the other thread could step in
        start = time.perf_counter()
        time.sleep(0.05)
        out = decode(self, *args, **kwargs)
        spans.append((threading.get_ident(), start, time.perf_counter()))
        return out

    monkeypatch.setattr(mask_decoder.SamHfMaskDecoder, "_decode", slow_decode)
    embeddings = _embeddings()
    expected = {prompts: model(image_embeddings=embeddings, input_points=_points(prompts, prompts)) for prompts in (1, 6)}

    def overlapping(caches):
        spans.clear()
        results, errors = {}, []

        def run(prompts, cache):
            try:
                with torch.no_grad():
                    for _ in range(3):
                        results[prompts] = model(image_embeddings=embeddings, input_points=_points(prompts, prompts), image_cache=cache)
            except Exception as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=run, args=(prompts, cache)) for prompts, cache in zip((1, 6), caches)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for prompts in (1, 6):
            torch.testing.assert_close(results[prompts].pred_masks, expected[prompts].pred_masks, rtol=1e-5, atol=1e-4)
        return any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans)

    shared = {}
    assert not overlapping([shared, shared])
    separate = [{}, {}]
    while id(separate[0]) >> 4 & 63 == id(separate[1]) >> 4 & 63:  # dicts that happen to share a lock take turns too
        separate.append({})
        separate = separate[-2:]
    assert overlapping(separate)
