"""sam_hf's compiled decoder kernel (`sam_hf.kernels`, "decoder_attention") in fp32: each function against its
formula in plain PyTorch, the decoder with it against the decoder without it and against transformers (SAM's own
decoder sizes: 8 heads, 256 channels), and where it is not used. bf16: test_decoder_kernels_bf16.py."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from references import randomize, transformers_from_ours
from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.kernels import loader
from sam_hf.modeling import decoder_attention, factored_passes, kernel_inputs, prompt_groups

KERNEL = "decoder_attention"  # the `module` fixture (conftest.py) builds it


def _skip_bf16_where_not_taken(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and kernels.kernel_for(KERNEL, dtype) is None:
        pytest.skip(f"the {KERNEL} kernel takes no bf16 here (oneDNN's bf16 products need AVX512-BF16)")


def _image_to_tokens_reference(residual, source, pe, weight, bias, heads, values, norm_weight, norm_bias, prompts):
    sides = residual.shape[0]
    expand = lambda t: t.repeat_interleave(prompts // sides, dim=0)  # noqa: E731 - prompt p reads side p // (P / S)
    a = expand(source) if source is not None else expand(residual) + pe
    logits = a @ weight + bias[:, None]  # (P, L, N), columns (t, head)
    length, n = logits.shape[1], logits.shape[2]
    probs = logits.view(prompts, length, n // heads, heads).softmax(dim=2).view(prompts, length, n)
    return F.layer_norm(expand(residual) + probs @ values, (residual.shape[-1],), norm_weight, norm_bias, 1e-6)


def _tokens_to_image_reference(queries, keys, pe):
    keys = keys.repeat_interleave(queries.shape[0] // keys.shape[0], dim=0)
    return ((queries @ (keys + pe).transpose(1, 2)).softmax(dim=-1)) @ keys


@pytest.mark.parametrize(
    "sides, prompts, channels, heads, tokens, shared_source",
    [
        (1, 3, 256, 8, 7, True),  # SAM's first pass: the shared query projection (register-held softmax and LayerNorm)
        (3, 3, 256, 8, 6, False),  # each prompt's own image side, x + pe folded; an even token count
        (1, 2, 32, 2, 5, False),  # the tiny test model: any head count and width
        (2, 4, 48, 4, 3, True),  # two images, two prompts each
        (1, 2, 64, 4, 7, False),  # the shipped model's decoder: 4 heads, 64 channels
        (1, 2, 40, 5, 4, False),  # a head count that does not divide 16: the general softmax
    ],
)
def test_image_to_tokens_matches_its_formula(module, threads, sides, prompts, channels, heads, tokens, shared_source):
    generator = torch.Generator().manual_seed(0)
    length, n = 300, tokens * heads  # not a multiple of the block size
    residual, pe = torch.randn(sides, length, channels, generator=generator), torch.randn(length, channels, generator=generator)
    depth = channels // 2 if shared_source else channels
    source = torch.randn(sides, length, depth, generator=generator) if shared_source else None
    weight = torch.randn(prompts, depth, n, generator=generator) / depth**0.5
    bias = torch.randn(prompts, n, generator=generator)
    bias[0, heads : 2 * heads] = float("-inf")  # prompt 0's token 1 is padding: exactly no weight
    values = torch.randn(prompts, n, channels, generator=generator)
    norm_weight, norm_bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    next_queries = torch.randn(prompts, 5, channels, generator=generator) / channels**0.5
    expected = _image_to_tokens_reference(residual, source, pe, weight, bias, heads, values, norm_weight, norm_bias, prompts)
    own = sides == prompts
    out = residual.clone() if own else torch.empty(prompts, length, channels)
    mixed = module.image_to_tokens(out if own else residual, source, pe, weight, bias, heads, values, norm_weight, norm_bias, 1e-6, out,
                                   next_queries)
    assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert_close(mixed, _tokens_to_image_reference(next_queries, expected, pe), rtol=1e-4, atol=1e-5)
    assert module.image_to_tokens(residual if not own else out.copy_(residual), source, pe, weight, bias, heads, values, norm_weight,
                                  norm_bias, 1e-6, out) is None  # no next attention asked for
    assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "sides, prompts, heads, width, tokens, length",
    [
        (1, 3, 8, 16, 7, 300),  # SAM's first pass (8 heads of 16 on the 128-wide projection); a partial last tile
        (1, 2, 8, 16, 11, 64),  # more tokens than one chunk of 8 held in registers (8 + 3)
        (2, 4, 5, 6, 3, 40),  # any head count and width, two images
    ],
)
def test_per_head_form_matches_the_block_diagonal_product(module, threads, sides, prompts, heads, width, tokens, length):
    """A tiled logit source and per-head keys (P, T, D): the logit (t, h) meets only head h's D / heads channels,
    as the dense form does with a block-diagonal (D, T * heads) weight."""
    generator = torch.Generator().manual_seed(2)
    channels, depth, n = 32, heads * width, tokens * heads
    residual, pe = torch.randn(sides, length, channels, generator=generator), torch.randn(length, channels, generator=generator)
    source = torch.randn(sides, length, depth, generator=generator)
    keys = torch.randn(prompts, tokens, depth, generator=generator) / width**0.5
    dense = torch.zeros(prompts, heads, width, tokens, heads)  # ([h, d], [t, h'])
    for head in range(heads):
        dense[:, head, :, :, head] = keys.view(prompts, tokens, heads, width)[:, :, head].transpose(1, 2)
    dense = dense.view(prompts, depth, n)
    bias = torch.randn(prompts, n, generator=generator)
    bias[1, heads : 2 * heads] = float("-inf")  # prompt 1's token 1 is padding
    values = torch.randn(prompts, n, channels, generator=generator)
    norm_weight, norm_bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    next_queries = torch.randn(prompts, 4, channels, generator=generator) / channels**0.5
    expected = _image_to_tokens_reference(residual, source, pe, dense, bias, heads, values, norm_weight, norm_bias, prompts)
    tiles = kernel_inputs.token_tiles(source)
    assert tiles.shape == (sides, -(-length // 16), depth, 16)
    out = torch.empty(prompts, length, channels)
    mixed = module.image_to_tokens(residual, tiles, pe, keys, bias, heads, values, norm_weight, norm_bias, 1e-6, out, next_queries)
    assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert_close(mixed, _tokens_to_image_reference(next_queries, expected, pe), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"tiled logit_source must be \(S, ceil\(L/16\), D, 16\)"):
        module.image_to_tokens(residual, tiles[:, 1:].contiguous(), pe, keys, bias, heads, values, norm_weight, norm_bias, 1e-6, out, None)
    with pytest.raises(RuntimeError, match=r"logit_weight must be \(P, D, N\), or \(P, T, D\) with a tiled logit_source"):
        module.image_to_tokens(residual, tiles, pe, dense, bias, heads, values, norm_weight, norm_bias, 1e-6, out, None)


@pytest.mark.parametrize(
    "sides, prompts, channels, heads, tokens, length, dtype",
    [
        (1, 3, 256, 8, 7, 300, torch.float32),  # SAM's first pass: heads of 16 (a row's sums in one vector); partial last tile
        (2, 4, 48, 4, 5, 70, torch.float32),  # heads of 6: the products' general form; two images
        (1, 3, 256, 8, 7, 300, torch.bfloat16),  # bf16 image tokens: the factors stay fp32
    ],
)
def test_factored_next_attention_matches_the_formed_tokens(module, threads, sides, prompts, channels, heads, tokens, length, dtype):
    """`factored` (the first pass's next token -> image attention on the shared image side, from the pass's weights
    and LayerNorm statistics) gives what that attention gives on the image tokens the pass forms."""
    _skip_bf16_where_not_taken(dtype)
    from sam_hf.configuration import SamHfMaskDecoderConfig

    generator = torch.Generator().manual_seed(4)
    config = SamHfMaskDecoderConfig(hidden_size=channels, num_attention_heads=heads, mlp_dim=64)
    torch.manual_seed(4)
    attention = decoder_attention.SamHfAttention(config, downsample_rate=2)
    norm = torch.nn.LayerNorm(channels, eps=1e-6)
    for parameter in (*attention.parameters(), *norm.parameters()):
        torch.nn.init.normal_(parameter, std=0.5 if parameter.dim() == 1 else channels**-0.5, generator=generator)
    attention.requires_grad_(False), norm.requires_grad_(False)
    depth, n = attention.internal_dim, tokens * heads
    residual, pe = torch.randn(sides, length, channels, generator=generator), torch.randn(length, channels, generator=generator)
    tiles = kernel_inputs.token_tiles(torch.randn(sides, length, depth, generator=generator))
    keys = torch.randn(prompts, tokens, depth, generator=generator) / (depth // heads) ** 0.5
    bias = torch.zeros(prompts, n)
    bias[0, heads : 2 * heads] = float("-inf")  # prompt 0's token 1 is padding: no weight, no part in the factors
    values = torch.randn(prompts, n, channels, generator=generator)
    next_tokens = torch.randn(sides, prompts // sides, tokens, channels, generator=generator)
    next_pe = torch.randn(sides, prompts // sides, tokens, channels, generator=generator)
    # the reference: the formed tokens' attention in fp32, on the inputs as the dtype holds them
    residual, pe, next_tokens, next_pe = (t.to(dtype).float() for t in (residual, pe, next_tokens, next_pe))
    for parameter in (*attention.parameters(), *norm.parameters()):
        parameter.copy_(parameter.to(dtype).float())
    formed = torch.empty(prompts, length, channels)
    mixed = module.image_to_tokens(residual, tiles, pe, keys, bias, heads, values, norm.weight, norm.bias, 1e-6, formed,
                                   attention.folded_queries(next_tokens, next_pe))
    expected = attention.attended_tokens(mixed, next_tokens.shape)

    residual, pe, next_tokens, next_pe = (t.to(dtype) for t in (residual, pe, next_tokens, next_pe))
    attention, norm = attention.to(dtype), norm.to(dtype)
    operands = factored_passes.next_attention_operands(attention, None, residual[:, None], pe, norm, values, next_tokens, next_pe)
    out = torch.empty(prompts, length, channels, dtype=dtype)
    sums = module.image_to_tokens(residual, tiles, pe, keys, bias, heads, values, norm.weight.float(), norm.bias.float(), 1e-6, out,
                                  factored=operands)
    assert sums.shape == (prompts, heads * tokens, depth // heads + n + 1)
    assert_close(out.float(), formed, rtol=2**-8 if dtype == torch.bfloat16 else 0.0, atol=2**-8 * float(formed.abs().max()) if dtype == torch.bfloat16 else 0.0)
    got = factored_passes.next_attention_output(attention, sums, norm, values, next_tokens.shape)
    assert got.dtype == dtype
    scale = float(expected.abs().max())
    if dtype == torch.float32:
        assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    else:  # the factors are fp32; the output projection is bf16
        assert_close(got.float(), expected, rtol=0.0, atol=2**-7 * scale)
    with pytest.raises(RuntimeError, match="next_queries and factored are two forms of one attention"):
        module.image_to_tokens(residual, tiles, pe, keys, bias, heads, values, norm.weight.float(), norm.bias.float(), 1e-6, out,
                               torch.zeros(prompts, 4, channels), factored=operands)
    with pytest.raises(RuntimeError, match=r"factored mixing must be \(P, T' \* heads, N \+ 1\)"):
        module.image_to_tokens(residual, tiles, pe, keys, bias, heads, values, norm.weight.float(), norm.bias.float(), 1e-6, out,
                               factored=[*operands[:4], operands[4][..., 1:].contiguous()])


@pytest.mark.parametrize(
    "sides, prompts, channels, heads, tokens, length, dtype",
    [
        (1, 3, 256, 8, 7, 300, torch.float32),  # SAM's second pass on the first one's records; a partial last tile
        (2, 4, 48, 4, 5, 70, torch.float32),  # any head count and width, two images
        (1, 3, 256, 8, 7, 300, torch.bfloat16),  # bf16 image tokens and records
    ],
)
def test_factored_source_matches_the_formed_tokens(module, threads, sides, prompts, channels, heads, tokens, length, dtype):
    """`source_factors` (the second pass's logits from the first pass's records on a shared image side) gives the
    second pass that the formed image tokens give."""
    _skip_bf16_where_not_taken(dtype)
    from sam_hf.configuration import SamHfMaskDecoderConfig

    generator = torch.Generator().manual_seed(5)
    config = SamHfMaskDecoderConfig(hidden_size=channels, num_attention_heads=heads, mlp_dim=64)
    torch.manual_seed(5)
    first, second = (decoder_attention.SamHfAttention(config, downsample_rate=2) for _ in range(2))
    norms = [torch.nn.LayerNorm(channels, eps=1e-6) for _ in range(2)]
    modules = (first, second, *norms)
    for parameter in (p for m in modules for p in m.parameters()):
        torch.nn.init.normal_(parameter, std=0.5 if parameter.dim() == 1 else channels**-0.5, generator=generator)
        parameter.requires_grad_(False)
    depth, n = first.internal_dim, tokens * heads
    image, pe = torch.randn(sides, length, channels, generator=generator), torch.randn(length, channels, generator=generator)
    token_rows = torch.randn(sides, prompts // sides, tokens, channels, generator=generator)
    token_pe = torch.randn(sides, prompts // sides, tokens, channels, generator=generator)
    mask = torch.ones(sides, prompts // sides, tokens, dtype=torch.bool)
    mask[0, 0, 1] = False  # prompt 0's token 1 is padding in both passes
    image, pe = image.to(dtype), pe.to(dtype)
    first, second = first.to(dtype), second.to(dtype)
    token_rows, token_pe = token_rows.to(dtype), token_pe.to(dtype)
    norms = [norm.float() for norm in norms]

    # the first pass, recorded: the image's tokens attend to the tokens (its per-head form on a random query source)
    first_keys = first.project(first.k_proj, token_rows + token_pe) * first.scale
    bias = torch.zeros(prompts, tokens, heads).masked_fill(~mask.reshape(prompts, tokens, 1), float("-inf")).reshape(prompts, n)
    projected = first.v_proj(token_rows)
    weights, stats = torch.empty(prompts, length, n, dtype=dtype), torch.empty(prompts, length, 2)
    formed = torch.empty(prompts, length, channels, dtype=dtype)
    module.image_to_tokens(image, kernel_inputs.token_tiles(torch.randn(sides, length, depth, generator=generator)), pe,
                           first_keys.reshape(prompts, tokens, depth).float(), bias, heads, first.value_rows(projected), norms[0].weight,
                           norms[0].bias, 1e-6, formed, None, weights, stats, True)
    record = (norms[0], (weights, stats, projected.reshape(prompts, tokens, depth), first.value_rows(projected)))

    # the second pass on the formed tokens (the dense form, x + pe), and on the first pass's factors
    keys = second.project(second.k_proj, token_rows + token_pe) * second.scale  # (S, P/S, T, C')
    folded = second._per_head_product(keys, second.q_proj.weight).view(prompts, heads, tokens, channels)
    dense = folded.permute(0, 3, 2, 1).reshape(prompts, channels, n).float()  # columns (t, h)
    dense_bias = (keys.reshape(prompts, tokens, heads, -1) * second.q_proj.bias.view(heads, -1)).sum(-1).float()
    dense_bias = dense_bias.masked_fill(~mask.reshape(prompts, tokens, 1), float("-inf")).reshape(prompts, n)
    values = second.value_rows(second.v_proj(token_rows))
    expected = torch.empty(prompts, length, channels, dtype=dtype)
    module.image_to_tokens(formed, None, pe, dense, dense_bias, heads, values, norms[1].weight, norms[1].bias, 1e-6, expected)
    operands, source_bias = factored_passes.source_operands(second, None, image[:, None], pe, record, keys)
    source_bias = source_bias.masked_fill(~mask.reshape(prompts, tokens, 1), float("-inf")).reshape(prompts, n)
    out = torch.empty(prompts, length, channels, dtype=dtype)
    module.image_to_tokens(formed, None, pe, keys.reshape(prompts, tokens, depth).float(), source_bias, heads, values, norms[1].weight,
                           norms[1].bias, 1e-6, out, source_factors=operands)
    if dtype == torch.float32:
        assert_close(out, expected, rtol=1e-4, atol=1e-4)
    else:  # the formed path's logits read bf16 tokens through bf16 products; the factors' are fp32: a few bf16 steps
        assert_close(out.float(), expected.float(), rtol=0.0, atol=4 * 2**-8 * float(expected.float().abs().max()))
    with pytest.raises(RuntimeError, match=r"source mixing must be \(P, N' \+ 1, N\)"):
        module.image_to_tokens(formed, None, pe, keys.reshape(prompts, tokens, depth).float(), source_bias, heads, values, norms[1].weight,
                               norms[1].bias, 1e-6, out, source_factors=[*operands[:4], operands[4][:, 1:].contiguous()])


def test_token_tiles_layout():
    rows = torch.arange(2 * 20 * 3, dtype=torch.float32).view(2, 20, 3)
    tiles = kernel_inputs.token_tiles(rows)  # (2, 2, 3, 16)
    assert tiles.shape == (2, 2, 3, 16) and tiles.is_contiguous()
    assert torch.equal(tiles[1, 0, 2], rows[1, :16, 2]) and torch.equal(tiles[0, 1, 1, :4], rows[0, 16:, 1])
    assert torch.equal(tiles[:, 1, :, 4:], torch.zeros(2, 3, 12))  # zero past L


def test_padded_tokens_get_no_weight(module):
    """A token masked by -inf gets weight exactly zero: its values, even huge ones, change nothing."""
    generator = torch.Generator().manual_seed(1)
    residual, pe = torch.randn(1, 64, 256, generator=generator), torch.randn(64, 256, generator=generator)
    weight, bias = torch.randn(1, 256, 56, generator=generator) / 16, torch.zeros(1, 56)
    bias[0, 8:16] = float("-inf")
    values = torch.randn(1, 56, 256, generator=generator)
    outs = []
    for scale in (1.0, 1e30):
        values[0, 8:16] = scale
        outs.append(torch.empty(1, 64, 256))
        module.image_to_tokens(residual, None, pe, weight, bias, 8, values, torch.ones(256), torch.zeros(256), 1e-6, outs[-1], None)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("sides, prompts, rows", [(1, 1, 56), (1, 3, 8), (2, 2, 7)])
def test_tokens_to_image_matches_its_formula(module, threads, sides, prompts, rows):
    generator = torch.Generator().manual_seed(2)
    keys, pe = torch.randn(sides, 1000, 64, generator=generator), torch.randn(1000, 64, generator=generator)
    queries = torch.randn(prompts, rows, 64, generator=generator)  # large logits: the running max moves often
    assert_close(module.tokens_to_image(queries, keys, pe), _tokens_to_image_reference(queries, keys, pe), rtol=1e-4, atol=1e-5)


def test_tokens_to_image_reads_the_sides_it_is_given(module, threads):
    """side_index: each prompt's image side picked in place (the prompts above the IoU threshold, no copy)."""
    generator = torch.Generator().manual_seed(5)
    keys, pe = torch.randn(5, 300, 32, generator=generator), torch.randn(300, 32, generator=generator)
    queries, index = torch.randn(3, 6, 32, generator=generator), torch.tensor([4, 0, 4])
    expected = _tokens_to_image_reference(queries, keys[index], pe)
    assert_close(module.tokens_to_image(queries, keys, pe, index), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="side_index values must be in"):
        module.tokens_to_image(queries, keys, pe, torch.tensor([0, 5, 1]))


def test_head_attention_matches_its_formula(module, threads):
    generator = torch.Generator().manual_seed(3)
    queries = torch.randn(2, 8, 28, 16, generator=generator) / 2  # (S, h, M, d)
    keys, values = torch.randn(2, 700, 128, generator=generator), torch.randn(2, 700, 128, generator=generator)
    split = lambda t: t.view(2, 700, 8, 16).transpose(1, 2)  # noqa: E731 - (S, h, L, d)
    expected = ((queries @ split(keys).transpose(-1, -2)).softmax(-1)) @ split(values)
    assert_close(module.head_attention(queries, keys, values), expected, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_refused(module):
    residual = torch.randn(1, 64, 32)
    with pytest.raises(RuntimeError, match="residual must be a contiguous fp32 CPU tensor"):
        module.image_to_tokens(residual.transpose(1, 2), None, torch.randn(64, 32), torch.randn(1, 32, 8), torch.zeros(1, 8), 2,
                               torch.randn(1, 8, 32), torch.ones(32), torch.zeros(32), 1e-6, torch.empty(1, 64, 32), None)
    with pytest.raises(RuntimeError, match="queries must be a contiguous fp32"):
        module.tokens_to_image(torch.randn(1, 4, 32, dtype=torch.float64), residual, torch.randn(64, 32))
    with pytest.raises(RuntimeError, match="keys must be"):
        module.tokens_to_image(torch.randn(1, 4, 16), residual, torch.randn(64, 32))


@pytest.fixture(scope="module")
def sam_decoder():
    """SAM's own decoder sizes (8 heads, 256 channels, a 64 x 64 grid; any variant has them) with random weights."""
    return randomize(SamHfModel(config_for_variant("vit_b")), seed=4).eval()


def _decode(model, prompts, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(1, 256, 64, 64, generator=generator)
    points = torch.rand(1, prompts, 1, 2, generator=generator) * 1024
    return model(image_embeddings=embeddings, input_points=points, multimask_output=True, **kwargs)


def _calls(monkeypatch, module):
    """Counts the kernel's calls by function while the decoder runs."""
    counts = {}

    class Spy:
        def __getattr__(self, name):
            def call(*args, **kwargs):
                counts[name] = counts.get(name, 0) + 1
                if name == "image_to_tokens":  # the factored forms taken (positional: factored, source_factors)
                    for form, index in (("factored", 15), ("source_factors", 16)):
                        counts[form] = counts.get(form, 0) + (len(args) > index and args[index] is not None)
                return getattr(module, name)(*args, **kwargs)

            return call

    monkeypatch.setattr(kernel_inputs, "kernel_for", lambda name, dtype: None if loader.kernel_for(name, dtype) is None else Spy())
    return counts


@pytest.mark.parametrize("prompts", [1, 6])
@torch.no_grad()
def test_sam_sized_decoder_equals_pytorch_path_and_transformers(module, sam_decoder, monkeypatch, prompts):
    """The "fold" route (one prompt) and the "shared" then "per_prompt" routes (six prompts), with the mask IoU
    threshold (the IoU token first, in the last pass) and without."""
    with monkeypatch.context() as patch:
        counts = _calls(patch, module)
        ours = _decode(sam_decoder, prompts)
        cut = _decode(sam_decoder, prompts, mask_iou_threshold=-1.0)
    groups = -(-prompts // prompt_groups.prompt_group(64 * 64 * 256 * 4, torch.device("cpu"), kernel=True))
    assert counts["image_to_tokens"] == 2 * 2 * groups  # one pass per block, two calls
    # the first token -> image attention: of one prompt's image side ("fold"), or of the shared one, per head; the
    # mask tokens' final attention after the threshold, of the image side each prompt has by then
    assert counts["tokens_to_image"] == (3 if prompts == 1 else groups) and counts.get("head_attention", 0) == (0 if prompts == 1 else 2 * groups)
    # on the shared image side: the first pass's next attention and the second pass's logits factored, in both calls
    assert counts["factored"] == counts["source_factors"] == (0 if prompts == 1 else 2 * groups)
    with monkeypatch.context() as patch:
        patch.setattr(kernel_inputs, "kernel_for", lambda name, dtype: None)
        plain = _decode(sam_decoder, prompts)
    reference = _decode(transformers_from_ours(sam_decoder), prompts)
    # random ViT-B weights give mask logits of a few hundred: fp32 rounding differs by ~1e-3 between any two of
    # the three (PyTorch's path against transformers too)
    scale = float(reference.pred_masks.abs().max())
    for out in (ours, cut):
        assert_close(out.pred_masks, plain.pred_masks, rtol=1e-4, atol=1e-5 * scale)
        assert_close(out.pred_masks, reference.pred_masks, rtol=1e-4, atol=1e-5 * scale)
        assert_close(out.iou_scores, plain.iou_scores, rtol=1e-4, atol=5e-4)
        assert_close(out.iou_scores, reference.iou_scores, rtol=1e-4, atol=5e-4)


def test_not_used_where_it_does_not_apply(module, tiny_model, monkeypatch):
    """Attention weights asked for, autograd recording, fp16, inside `sam_hf.kernels.disabled()`: PyTorch's path
    (bf16 takes the kernel where the CPU runs oneDNN's bf16 products: test_decoder_kernels_bf16.py)."""
    counts = _calls(monkeypatch, module)
    embeddings, points = torch.randn(1, 32, 8, 8), torch.rand(1, 3, 1, 2) * 128
    with torch.no_grad():
        tiny_model(image_embeddings=embeddings, input_points=points, output_attentions=True)
        tiny_model.to(torch.float16)(image_embeddings=embeddings.half(), input_points=points)
        tiny_model.float()
    tiny_model(image_embeddings=embeddings, input_points=points)  # grad enabled, the weights require it
    with torch.no_grad(), kernels.disabled():
        tiny_model(image_embeddings=embeddings, input_points=points)
    assert counts == {}
    with torch.no_grad():
        tiny_model(image_embeddings=embeddings, input_points=points)
    assert counts.get("image_to_tokens") == 2
