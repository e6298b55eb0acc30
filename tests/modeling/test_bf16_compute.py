"""bf16 models on CPUs without bf16 arithmetic (modeling/bf16_compute.py): the ViT blocks, neck and mask decoder
compute in fp32 from the bf16 weights, rounding their outputs to bf16; `SAM_HF_BF16_ARITHMETIC` chooses."""
import copy

import pytest
import torch

from sam_hf.modeling import bf16_compute


@pytest.fixture
def models(tiny_model):
    """(bf16 model, its fp32 copy: the same bf16-rounded weights in fp32)."""
    bf16 = copy.deepcopy(tiny_model).to(torch.bfloat16)
    return bf16, copy.deepcopy(bf16).float()


def _inputs():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 128, 128, generator=generator).bfloat16()
    points = torch.rand(1, 5, 1, 2, generator=generator) * 128
    return pixels, points, torch.ones(1, 5, 1, dtype=torch.long)


def _encoder_in_fp32_blocks(model, fp32, pixels):
    """The expected encoder: the patch embedding in bf16, then each block and the neck of the fp32 copy on the
    previous output in fp32, rounded to bf16."""
    encoder, blocks = model.vision_encoder, fp32.vision_encoder
    hidden = encoder.patch_embed(pixels) + encoder.pos_embed  # (B, g, g, C) bf16
    for layer in blocks.layers:
        hidden = layer(hidden.float())[0].bfloat16()
    return blocks.neck(hidden.float()).bfloat16()


def test_encoder_blocks_compute_in_fp32(models, monkeypatch):
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fp32")
    model, fp32 = models
    pixels, _, _ = _inputs()
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
        with monkeypatch.context() as native:
            native.setenv("SAM_HF_BF16_ARITHMETIC", "native")
            expected = _encoder_in_fp32_blocks(model, fp32, pixels)
            in_bf16 = model.get_image_embeddings(pixels)
        reference = fp32.get_image_embeddings(pixels.float())
    assert embeddings.dtype == torch.bfloat16 and model.vision_encoder.neck.conv1.weight.dtype == torch.bfloat16
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=0)
    # closer to the fp32 computation than bf16 arithmetic is
    assert (embeddings.float() - reference).abs().mean() < (in_bf16.float() - reference).abs().mean()


def _decoder_in_fp32(model, fp32, embeddings, points, labels):
    """The expected decoder: the bf16 model's prompt encoding and positional encoding (bf16), then the fp32 copy's
    decoder on them in fp32, its outputs rounded to bf16."""
    sparse, valid, dense = model.prompt_encoder(
        positional_embedding=model.shared_image_embedding, batch_size=1, input_points=points, input_labels=labels,
        input_boxes=None, input_masks=None,
    )
    masks, iou, _ = fp32.mask_decoder(
        image_embeddings=embeddings.float(), image_pe=model.get_image_wide_positional_embeddings().float(),
        sparse_embeddings=sparse.float(), sparse_valid=valid, dense_embeddings=dense.float(), multimask_output=True,
    )
    return masks.bfloat16(), iou.bfloat16()


def test_decoder_computes_in_fp32_with_its_kept_weights(models, monkeypatch):
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fp32")
    model, fp32 = models
    pixels, points, labels = _inputs()
    cache = {}
    with torch.no_grad():
        embeddings = model.get_image_embeddings(pixels)
        out = model(image_embeddings=embeddings, input_points=points, input_labels=labels, image_cache=cache)
        kept, key = bf16_compute._KEPT[model.mask_decoder]["weights"], cache["sam_hf.image_cache.key"]
        again = model(image_embeddings=embeddings, input_points=points, input_labels=labels, image_cache=cache)
        masks, iou = _decoder_in_fp32(model, fp32, embeddings, points, labels)
    assert out.pred_masks.dtype == out.iou_scores.dtype == torch.bfloat16
    torch.testing.assert_close(out.pred_masks, masks, rtol=0, atol=0)
    torch.testing.assert_close(out.iou_scores, iou, rtol=0, atol=0)
    # the second call reads the kept image work and the kept fp32 weights (the cache's key did not change)
    assert bf16_compute._KEPT[model.mask_decoder]["weights"] is kept and cache["sam_hf.image_cache.key"] is key
    # the no-mask dense embedding reached the decoder broadcast (zero strides), so its image side is kept as well
    assert cache["reuses_image_side"] and "tokens" in cache
    assert copy.deepcopy(model.mask_decoder) not in bf16_compute._KEPT  # kept beside the module, not in it
    torch.testing.assert_close(again.pred_masks, out.pred_masks, rtol=0, atol=0)

    # weights changed in place: the fp32 copy is made again, and the outputs follow
    with torch.no_grad():
        model.mask_decoder.iou_prediction_head.proj_out.bias.add_(1.0)
        fp32.mask_decoder.iou_prediction_head.proj_out.bias.add_(1.0)
        changed = model(image_embeddings=embeddings, input_points=points, input_labels=labels, image_cache=cache)
        _, iou = _decoder_in_fp32(model, fp32, embeddings, points, labels)
    assert bf16_compute._KEPT[model.mask_decoder]["weights"] is not kept
    torch.testing.assert_close(changed.iou_scores, iou, rtol=0, atol=0)


def _count_fp32_calls(monkeypatch) -> list:
    calls = []
    original = bf16_compute.call_in_fp32
    monkeypatch.setattr(bf16_compute, "call_in_fp32", lambda module, *a, **k: calls.append(type(module).__name__) or original(module, *a, **k))
    return calls


def _run(model):
    pixels, points, labels = _inputs()
    return model(pixel_values=pixels, input_points=points, input_labels=labels)


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512bw"}, True), ({"avx512f", "avx512_bf16"}, False),
                                             ({"avx2", "amx_bf16"}, False)])
def test_auto_follows_the_cpu(models, monkeypatch, flags, expected):
    monkeypatch.delenv("SAM_HF_BF16_ARITHMETIC", raising=False)
    monkeypatch.setattr(bf16_compute, "cpu_flags", lambda: flags)
    monkeypatch.setattr(bf16_compute.platform, "machine", lambda: "x86_64")
    bf16_compute._cpu_has_bf16_arithmetic.cache_clear()
    try:
        calls = _count_fp32_calls(monkeypatch)
        with torch.no_grad():
            _run(models[0])
        layers = len(models[0].vision_encoder.layers)
        assert sorted(calls) == (sorted(["SamHfVisionLayer"] * layers + ["SamHfVisionNeck", "SamHfMaskDecoder"]) if expected else [])
        assert bf16_compute.bf16_computed_in_fp32(torch.device("cpu")) is expected
        assert not bf16_compute.bf16_computed_in_fp32(torch.device("meta"))  # CPUs only
    finally:
        bf16_compute._cpu_has_bf16_arithmetic.cache_clear()


def test_native_fp32_models_and_training_keep_their_arithmetic(models, tiny_model, monkeypatch):
    calls = _count_fp32_calls(monkeypatch)
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "native")
    with torch.no_grad():
        _run(models[0])
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fp32")
    with torch.no_grad():
        _run(tiny_model.to(torch.float32))  # an fp32 model: nothing to do
    trained = copy.deepcopy(models[0]).train()
    _run(trained).pred_masks.float().sum().backward()  # autograd records: bf16 arithmetic, gradients on the bf16 weights
    assert calls == []
    assert trained.vision_encoder.layers[0].attn.qkv.weight.grad.dtype == torch.bfloat16


def test_unknown_mode_is_refused(monkeypatch):
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fast")
    with pytest.raises(ValueError, match=r"SAM_HF_BF16_ARITHMETIC must be one of \('auto', 'native', 'fp32'\), got 'fast'"):
        bf16_compute.bf16_computed_in_fp32(torch.device("cpu"))


def test_fp32_call_puts_the_weights_back_even_when_it_fails(models, monkeypatch):
    monkeypatch.setenv("SAM_HF_BF16_ARITHMETIC", "fp32")
    model = models[0]
    before = [(name, id(t), t.dtype) for name, t in [*model.named_parameters(), *model.named_buffers()]]
    seen = []

    def failing_forward(module, *args, **kwargs):
        seen.append((type(module).__name__, {t.dtype for t in module.parameters()}))  # the fp32 copies are in place
        raise RuntimeError("failed inside the fp32 call")

    original = bf16_compute.call_in_fp32
    monkeypatch.setattr(bf16_compute, "call_in_fp32", lambda module, forward, *a: original(module, failing_forward, *a))
    with torch.no_grad(), pytest.raises(RuntimeError, match="failed inside the fp32 call"):
        _run(model)
    assert seen == [("SamHfVisionLayer", {torch.float32})]
    assert [(name, id(t), t.dtype) for name, t in [*model.named_parameters(), *model.named_buffers()]] == before
    assert not getattr(bf16_compute._ACTIVE, "on", False)


def test_slots_list_every_parameter_and_buffer_once_and_ties_share_a_copy(models):
    decoder = models[0].mask_decoder
    slots = bf16_compute._slots(decoder)
    assert [id(t) for _, _, t in slots if isinstance(t, torch.nn.Parameter)] == [id(p) for p in decoder.parameters()]
    assert {id(t) for _, _, t in slots} == {id(t) for t in [*decoder.parameters(), *decoder.buffers()]}
    weight = decoder.iou_prediction_head.proj_in.weight
    first, second, other = bf16_compute._fp32_copies([weight, weight, decoder.iou_prediction_head.proj_in.bias])
    assert first is second and first.dtype == torch.float32 and torch.equal(first, weight.float()) and other is not first
