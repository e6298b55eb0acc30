"""sam_hf's compiled attention kernel with relative positions (sam_hf.kernels) in bf16: Meta's formula within bf16
rounding, the same encoder output as the PyTorch path it replaces, and a clean fallback when it cannot be used.
Its fp32 form: test_relpos_kernel_fp32.py."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from sam_hf import SamHfModel, config_for_variant, kernels
from sam_hf.kernels import loader
from sam_hf.modeling.attention import eager_attention_with_rel_pos, relpos_kernel_usable

NAME = "relpos_attention"
SOURCES = Path(loader.__file__).parent  # the package's kernel sources, as files


def _buildable_here() -> str | None:
    """Why the kernel cannot be built on this machine, or None when it must build."""
    reason = loader._why_not(NAME)
    if reason is None and shutil.which("c++") is None:
        reason = "no C++ compiler"
    return reason


@pytest.fixture(scope="module")
def relpos_attention():
    reason = _buildable_here()
    if reason is not None:
        pytest.skip(f"the kernel cannot be used here: {reason}")
    module = kernels.kernel(NAME)
    assert module is not None, f"the kernel should build on this machine: {kernels.unavailable_reason(NAME)}"
    if kernels.kernel_for(NAME, torch.bfloat16) is None:
        pytest.skip("the kernel takes no bf16 here (oneDNN's bf16 products need AVX512-BF16); fp32: test_relpos_kernel_fp32.py")
    return module.relpos_attention


@pytest.mark.parametrize(
    "groups, size, head_dim",
    [
        ((2, 3), (14, 14), 64),  # ViT window: one key block and one query block, lane-permuted terms
        ((1, 2), (64, 64), 64),  # ViT-B global grid: 16 key blocks of 4 rows, whole-vector terms
        ((2, 1), (37, 20), 32),  # key blocks of 12 rows, the last one partial; gathered terms
        ((1, 2), (16, 32), 8),  # width a multiple of 16, narrow heads
        ((1, 1), (5, 7), 16),
        ((1, 1), (1, 1), 2),
    ],
)
@pytest.mark.parametrize("terms_dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_meta_formula(relpos_attention, groups, size, head_dim, terms_dtype):
    generator = torch.Generator().manual_seed(0)
    height, width = size
    length, count = height * width, groups[0] * groups[1]
    q, k, v = (torch.randn(*groups, length, head_dim, generator=generator).bfloat16() for _ in range(3))
    rel_h = (torch.randn(count, height, width, height, generator=generator) * 2).to(terms_dtype)
    rel_w = (torch.randn(count, height, width, width, generator=generator) * 2).to(terms_dtype)
    scale = head_dim**-0.5
    expected, _ = eager_attention_with_rel_pos(
        q.float(), k.float(), v.float(), scale=scale, size=size,
        rel_h=rel_h.float().reshape(*groups, length, height), rel_w=rel_w.float().reshape(*groups, length, width),
    )
    out = relpos_attention(q, k, v, rel_h, rel_w, scale)
    assert out.dtype == torch.bfloat16 and out.shape == (*groups, length, head_dim)
    # bf16 output and bf16 probabilities: errors of a few bf16 ulps of values of size ~1
    assert_close(out.float(), expected, rtol=0, atol=2e-2)
    assert (out.float() - expected).abs().mean() < 2e-3


def test_kernel_rescales_when_later_key_blocks_dominate(relpos_attention):
    # row terms growing along the key rows: each key block (4 rows of 64) has a max 5 * 4 = 20 above the
    # previous one, more than the kernel's lazy-rescale margin (16), so every block is redone against a new max
    generator = torch.Generator().manual_seed(3)
    height = width = 64
    length, head_dim = height * width, 64
    q, k, v = (torch.randn(1, 1, length, head_dim, generator=generator).bfloat16() for _ in range(3))
    rel_h = (5.0 * torch.arange(height, dtype=torch.float32)).expand(1, height, width, height)
    rel_w = torch.randn(1, height, width, width, generator=generator)
    expected, _ = eager_attention_with_rel_pos(
        q.float(), k.float(), v.float(), scale=0.125, size=(height, width),
        rel_h=rel_h.reshape(1, 1, length, height), rel_w=rel_w.reshape(1, 1, length, width),
    )
    out = relpos_attention(q, k, v, rel_h, rel_w, 0.125)
    assert torch.isfinite(out).all()
    assert_close(out.float(), expected, rtol=0, atol=2e-2)


def test_kernel_reads_and_writes_strided_views(relpos_attention):
    # as the encoder calls it for global attention: q, k, v are views into the qkv projection (B, L, 3C)
    # and the output goes into a view of the (B, L, C) grid; terms are strided views of a wider table
    generator = torch.Generator().manual_seed(1)
    batch, heads, size, head_dim = 2, 3, (14, 14), 64
    length = size[0] * size[1]
    qkv = torch.randn(batch, length, 3 * heads * head_dim, generator=generator).bfloat16()
    q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, heads, L, D) each
    table = torch.randn(batch * heads, 14, 14, 40, generator=generator)
    rel_h, rel_w = table[..., 3:17], table[..., 20:34]
    grid = torch.full((batch, length, heads * head_dim), float("nan"), dtype=torch.bfloat16)
    out = grid.view(batch, length, heads, head_dim).transpose(1, 2)
    returned = relpos_attention(q, k, v, rel_h, rel_w, 0.125, out)
    dense = relpos_attention(q.contiguous(), k.contiguous(), v.contiguous(), rel_h.contiguous(), rel_w.contiguous(), 0.125)
    assert returned.data_ptr() == grid.data_ptr()
    assert torch.equal(out, dense) and not grid.isnan().any()


def test_kernel_refuses_wrong_inputs(relpos_attention):
    q = torch.randn(1, 1, 16, 8).bfloat16()
    rel = torch.zeros(1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="must be all bfloat16 or all float32"):
        relpos_attention(q.float(), q, q, rel, rel, 1.0)
    with pytest.raises(RuntimeError, match="L must equal H \\* W"):
        relpos_attention(q, q, q, torch.zeros(1, 4, 3, 4), torch.zeros(1, 4, 3, 3), 1.0)
    with pytest.raises(RuntimeError, match="head width must be even"):
        relpos_attention(q[..., :7], q[..., :7], q[..., :7], rel, rel, 1.0)
    with pytest.raises(RuntimeError, match="out must have the query's dtype and shape"):
        relpos_attention(q, q, q, rel, rel, 1.0, torch.empty(1, 1, 16, 4, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="out must have the query's dtype and shape"):
        relpos_attention(q, q, q, rel, rel, 1.0, torch.empty(1, 1, 16, 8))


def _encoder_embeddings(model: SamHfModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.get_image_embeddings(pixels).float()


def test_bf16_encoder_with_kernel_matches_the_pytorch_path(relpos_attention, monkeypatch):
    # 256 px: 4 x 4 windows of 4 x 4 tokens and a 16 x 16 global grid; rel-pos tables made to matter
    config = config_for_variant("tiny", image_size=256)
    torch.manual_seed(0)
    model = SamHfModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:
                param.normal_(std=1.0)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    reference = _encoder_embeddings(model, pixels)  # fp32
    model = model.to(torch.bfloat16)
    calls = []
    kernel_module = kernels.kernel(NAME)
    monkeypatch.setattr(loader, "_LOADED", {NAME: _Counting(kernel_module, calls)})
    with_kernel = _encoder_embeddings(model, pixels.bfloat16())
    assert len(calls) == config.vision_config.num_hidden_layers  # every block's attention took the kernel
    monkeypatch.setattr(loader, "_LOADED", {NAME: None})
    without = _encoder_embeddings(model, pixels.bfloat16())

    def relative(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert relative(with_kernel, reference) < 2e-2
    assert relative(with_kernel, reference) < 1.5 * relative(without, reference)  # no less exact than the fallback
    assert relative(with_kernel, without) < 2e-2


class _Counting:
    def __init__(self, module, calls):
        self._module, self._calls = module, calls

    def relpos_attention(self, *args):
        self._calls.append(args[0].shape)
        return self._module.relpos_attention(*args)


def test_disabled_kernel_falls_back_and_says_why(monkeypatch):
    monkeypatch.setenv("SAM_HF_KERNELS", "0")
    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_REASONS", {})
    assert kernels.kernel(NAME) is None
    assert kernels.unavailable_reason(NAME) == "disabled by SAM_HF_KERNELS"
    config = config_for_variant("tiny")
    torch.manual_seed(0)
    model = SamHfModel(config).eval().to(torch.bfloat16)
    embeddings = _encoder_embeddings(model, torch.randn(1, 3, 128, 128).bfloat16())
    assert torch.isfinite(embeddings).all()
    with pytest.raises(ValueError, match="name must be one of"):
        kernels.kernel("flash")


def test_kernel_for_asks_each_module_about_bf16_once(monkeypatch, capsys):
    """`kernel_for(name, dtype)`: the module for fp32; for bf16 only where its `bf16_usable()` says yes (asked once);
    never for other dtypes. `python -m sam_hf.kernels` reports the same."""

    class Module:
        asked = 0

        def bf16_usable(self):
            Module.asked += 1
            return self.answer

        def isa(self):
            return "avx512"

    yes, no = Module(), Module()
    yes.answer, no.answer = True, False
    monkeypatch.setattr(loader, "_LOADED", {"relpos_attention": yes, "decoder_attention": no, "mask_upscaling": None, "mask_resize": None})
    monkeypatch.setattr(loader, "_REASONS", {"mask_upscaling": "this CPU lacks avx512f", "mask_resize": "this CPU lacks avx512f"})
    monkeypatch.setattr(loader, "_TAKES_BF16", {})
    assert kernels.kernel_for(NAME, torch.float32) is yes and kernels.kernel_for(NAME, torch.bfloat16) is yes
    assert kernels.kernel_for("decoder_attention", torch.bfloat16) is None and kernels.kernel_for("decoder_attention", torch.float32) is no
    assert kernels.kernel_for(NAME, torch.bfloat16) is yes and Module.asked == 2  # once per module
    assert kernels.kernel_for(NAME, torch.float16) is None and kernels.kernel_for("mask_upscaling", torch.float32) is None
    from sam_hf.kernels.__main__ import main

    main([])
    report = capsys.readouterr().out
    assert "relpos_attention: built for avx512," in report and "takes fp32 and bf16 here" in report
    assert "decoder_attention: built" in report and report.count("takes fp32 here") == 1
    assert "mask_upscaling: not used: this CPU lacks avx512f" in report


def test_failed_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_REASONS", {})
    monkeypatch.setattr(loader, "_why_not", lambda name: None)

    def broken(name):
        raise RuntimeError("Error building extension 'relpos_attention'")

    monkeypatch.setattr(loader, "_build", broken)
    assert kernels.kernel(NAME) is None
    assert kernels.unavailable_reason(NAME) == "build failed: RuntimeError: Error building extension 'relpos_attention'"


class _Served:  # a built module whose runtime check says yes
    @staticmethod
    def brgemm_usable():
        return True


def _builds_that_must_overlap(monkeypatch) -> list[str]:
    """Fresh loader state; mask_upscaling and mask_resize unusable here; `_build` records each name and waits for a second
    build to start (a broken barrier, so a failed build, unless two run at once). Returns the list of names built."""
    import threading

    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_REASONS", {})
    monkeypatch.setattr(loader, "_why_not", lambda name: "this CPU lacks avx512f" if name in ("mask_upscaling", "mask_resize") else None)
    both_building = threading.Barrier(2, timeout=20)
    built = []

    def build(name):
        built.append(name)
        both_building.wait()
        return _Served

    monkeypatch.setattr(loader, "_build", build)
    return built


def test_build_all_runs_the_missing_builds_side_by_side(monkeypatch):
    """`build_all()` (`python -m sam_hf.kernels`, setup.sh): the builds it needs run at once, each kernel is built once,
    and kernels that cannot be used here come back None with their reason."""
    built = _builds_that_must_overlap(monkeypatch)
    with kernels.disabled():
        assert kernels.build_all() == {name: None for name in sorted(loader.REQUIREMENTS)} and built == []
    modules = kernels.build_all()
    assert modules == {"decoder_attention": _Served, "mask_resize": None, "mask_upscaling": None, "relpos_attention": _Served}
    assert sorted(built) == ["decoder_attention", "relpos_attention"]
    assert kernels.unavailable_reason("mask_upscaling") == "this CPU lacks avx512f"
    assert kernels.unavailable_reason(NAME) is None and kernels.kernel(NAME) is _Served
    assert kernels.build_all([NAME]) == {NAME: _Served} and len(built) == 2  # loaded once, never rebuilt
    with pytest.raises(ValueError, match=r"names must be among .*got \['flash'\]"):
        kernels.build_all([NAME, "flash"])


def test_a_first_build_compiles_the_other_missing_kernels_alongside(monkeypatch, tmp_path):
    """`kernel(name)` when `name` must be compiled: the other kernels usable here and not in the cache are compiled at
    the same time; a kernel already in the cache is loaded alone."""
    monkeypatch.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path))
    built = _builds_that_must_overlap(monkeypatch)
    assert kernels.kernel(NAME) is _Served and sorted(built) == ["decoder_attention", NAME]
    assert kernels.kernel("decoder_attention") is _Served and kernels.kernel("mask_upscaling") is None and len(built) == 2

    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_build", lambda name: built.append(name) or _Served)  # no barrier
    isa = loader.kernel_isa()
    build_dir = loader._build_dir(NAME, isa)
    build_dir.mkdir(parents=True)
    (build_dir / f"{loader._module_name(NAME, isa)}.so").write_bytes(b"")  # NAME in the cache, decoder_attention not
    assert kernels.kernel(NAME) is _Served and built[2:] == [NAME]


def test_kernel_without_its_source_is_not_built(monkeypatch):
    """Remote code generated before the sources were written into it has none: PyTorch's path, and the reason."""
    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_REASONS", {})
    monkeypatch.setattr(loader, "cpu_flags", lambda: {f for spec in loader.ISAS.values() for f in spec["cpu_flags"]})
    monkeypatch.setattr(loader.platform, "system", lambda: "Linux")
    monkeypatch.setattr(loader.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("SAM_HF_KERNELS", raising=False)
    monkeypatch.setattr(loader, "kernel_sources", lambda: {})
    monkeypatch.setattr(loader, "_build", lambda name: pytest.fail(f"{name} was built without its source"))
    assert kernels.kernel(NAME) is None
    assert kernels.unavailable_reason(NAME) == f"its source {NAME}.cpp is not among sam_hf's kernel sources"


def test_built_kernel_whose_runtime_check_fails_is_not_used(monkeypatch):
    monkeypatch.setattr(loader, "_LOADED", {})
    monkeypatch.setattr(loader, "_REASONS", {})
    monkeypatch.setattr(loader, "_why_not", lambda name: None)

    class Unserved:  # a module that built but whose brgemm check says no (a CPU oneDNN's bf16 brgemm skips)
        relpos_attention = None

        @staticmethod
        def brgemm_usable():
            return False

    monkeypatch.setattr(loader, "_build", lambda name: Unserved)
    assert kernels.kernel(NAME) is None
    assert kernels.unavailable_reason(NAME) == "built, but its check brgemm_usable() says this CPU is not served"


def test_kernel_in_use_passed_its_runtime_checks():
    """fp32 wherever the kernel builds (AVX-512); bf16 exactly where the CPU has AVX512-BF16 and oneDNN is on."""
    reason = _buildable_here()
    if reason is not None:
        pytest.skip(f"the kernel cannot be used here: {reason}")
    module = kernels.kernel(NAME)
    assert module.brgemm_usable() is True and kernels.unavailable_reason(NAME) is None
    cpu = torch.device("cpu")
    assert relpos_kernel_usable(dtype=torch.float32, device=cpu, head_dim=64)
    has_bf16 = "avx512_bf16" in loader.cpu_flags()
    assert module.bf16_usable() is has_bf16
    assert relpos_kernel_usable(dtype=torch.bfloat16, device=cpu, head_dim=64) is has_bf16
    with torch.backends.mkldnn.flags(enabled=False):  # ATen's brgemm then refuses VNNI input: the bf16 check sees it
        assert module.bf16_usable() is False
        assert not relpos_kernel_usable(dtype=torch.bfloat16, device=cpu, head_dim=64)
        assert not relpos_kernel_usable(dtype=torch.float32, device=cpu, head_dim=64)  # the products are oneDNN's


def test_build_compiles_a_copy_of_the_source_in_its_cache_folder(monkeypatch, tmp_path):
    """Every checkout compiles the same path (ninja rebuilds when the source path changes); the copy is rewritten
    only when the source differs, so its timestamp (which ninja also reads) stays put."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda name, sources, **kwargs: calls.append((sources, kwargs["build_directory"])))
    loader._build(NAME)
    (staged,), build_dir = calls[0]
    assert os.path.dirname(staged) == build_dir and build_dir.startswith(str(tmp_path))
    with open(staged, "rb") as copy, open(SOURCES / f"{NAME}.cpp", "rb") as source:
        assert copy.read() == source.read()
    with open(os.path.join(build_dir, "simd.h"), "rb") as copy, open(SOURCES / "simd.h", "rb") as source:
        assert copy.read() == source.read()  # the shared header it includes sits beside it
    stamp = os.stat(staged).st_mtime_ns
    loader._build(NAME)
    assert calls[1] == calls[0] and os.stat(staged).st_mtime_ns == stamp
    with open(staged, "ab") as copy:  # a stale or damaged copy is replaced
        copy.write(b"// stale\n")
    loader._build(NAME)
    with open(staged, "rb") as copy, open(SOURCES / f"{NAME}.cpp", "rb") as source:
        assert copy.read() == source.read()


def test_the_build_folder_follows_the_shared_header(monkeypatch, tmp_path):
    """A change to simd.h (which every kernel includes) gives a new build folder, as a change to the source does."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda name, sources, **kwargs: calls.append(kwargs["build_directory"]))
    loader._build(NAME)
    changed = {**loader.kernel_sources(), "simd.h": (SOURCES / "simd.h").read_text() + "// changed\n"}
    monkeypatch.setattr(loader, "kernel_sources", lambda: changed)
    loader._build(NAME)
    assert calls[0] != calls[1]


def test_each_torch_installation_has_its_own_build_folder(monkeypatch, tmp_path):
    """Two environments (their torch include paths differ, so do the compile commands) must not share a folder:
    ninja would rebuild the kernel every time the other environment runs. The same one keeps its folder."""
    monkeypatch.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path))
    here = loader._build_dir(NAME, "avx512")
    assert loader._build_dir(NAME, "avx512") == here
    monkeypatch.setattr(loader, "_installation", lambda: "/other/venv/lib/python3.11/site-packages/torch\n/usr/include/python3.11")
    assert loader._build_dir(NAME, "avx512") != here and loader._build_dir(NAME, "avx512").parent == here.parent


def test_kernel_sources_are_the_files_of_the_package():
    """`kernel_sources()` gives every .cpp and .h beside the loader, byte for byte (the build folder's key)."""
    sources = loader.kernel_sources()
    files = sorted(path.name for pattern in ("*.cpp", "*.h") for path in SOURCES.glob(pattern))
    assert sorted(sources) == files and {f"{name}.cpp" for name in loader.REQUIREMENTS} <= set(sources)
    for file, text in sources.items():
        assert text.encode("utf-8") == (SOURCES / file).read_bytes(), file


def test_bf16_call_on_a_cpu_without_avx512_bf16_raises():
    """The bf16 path runs AVX512-BF16 instructions: called directly on a CPU without them, each kernel raises (the
    process would otherwise die of an illegal instruction)."""
    if "avx512_bf16" in loader.cpu_flags():
        pytest.skip("this CPU has AVX512-BF16: the bf16 paths run (test_kernel_matches_meta_formula and the others)")
    module = kernels.kernel(NAME)
    if module is None:
        pytest.skip(f"the kernel cannot be used here: {kernels.unavailable_reason(NAME)}")
    q = torch.randn(1, 1, 16, 8).bfloat16()
    rel = torch.zeros(1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="relpos_attention: (bf16 inputs need a CPU with AVX512-BF16|this is its AVX2 build)"):
        module.relpos_attention(q, q, q, rel, rel, 1.0)
    decoder = kernels.kernel("decoder_attention")
    if decoder is not None:  # its dtype check comes first of all: any bf16 tokens
        tokens = torch.randn(1, 2, 16).bfloat16()
        with pytest.raises(RuntimeError, match="decoder_attention: (bf16 inputs need a CPU with AVX512-BF16|this is its AVX2 build)"):
            decoder.head_attention(torch.randn(1, 2, 3, 8).bfloat16(), tokens, tokens)
