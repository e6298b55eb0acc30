"""The kernels' instruction sets (sam_hf.kernels.loader.ISAS): which build a CPU gets, what `SAM_HF_KERNEL_ISA` picks,
and that each build has its own module, flags and cache folder. That the AVX2 builds compute what the AVX-512 ones do
is tested by every kernel test, which runs once per build this CPU runs (`module` in conftest.py, kernel_builds.py)."""

from pathlib import Path

import pytest

from kernel_builds import kernel_isas
from sam_hf import kernels
from sam_hf.kernels import __main__ as kernels_main
from sam_hf.kernels import loader

AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"}
AVX2 = {"avx2", "fma", "bmi2"}


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader's state empty, `SAM_HF_KERNELS` and `SAM_HF_KERNEL_ISA` unset, on x86-64 Linux."""
    for state in ("_LOADED", "_REASONS", "_TAKES_BF16"):
        monkeypatch.setattr(loader, state, {})
    monkeypatch.delenv("SAM_HF_KERNELS", raising=False)
    monkeypatch.delenv(loader.ISA_VARIABLE, raising=False)
    monkeypatch.setattr(loader.platform, "system", lambda: "Linux")
    monkeypatch.setattr(loader.platform, "machine", lambda: "x86_64")
    return monkeypatch


@pytest.mark.parametrize(("flags", "asked", "isa"), [
    (AVX512, None, "avx512"),
    (AVX512, "auto", "avx512"),
    (AVX512, "avx2", "avx2"),  # an AVX-512 CPU runs the AVX2 builds too
    (AVX512, " AVX512 ", "avx512"),
    (AVX2, None, "avx2"),
    (AVX2, "avx512", None),  # asked for what the CPU lacks: no kernels
    ({"avx2"}, None, None),  # AVX2 without FMA
    ({"sse4_2", "avx"}, None, None),
])
def test_each_cpu_gets_the_best_build_it_runs(fresh_loader, flags, asked, isa):
    fresh_loader.setattr(loader, "cpu_flags", lambda: flags)
    if asked is not None:
        fresh_loader.setenv(loader.ISA_VARIABLE, asked)
    assert kernels.kernel_isa() == isa
    reason = loader._why_not("decoder_attention")
    if isa is None:
        assert reason.startswith("this CPU lacks ") and ("avx512 (" in reason) == (asked != "avx2")
    else:
        assert reason is None


def test_a_cpu_without_either_gets_pytorch_and_the_reason(fresh_loader):
    fresh_loader.setattr(loader, "cpu_flags", lambda: {"sse4_2", "avx"})
    fresh_loader.setattr(loader, "_build", lambda name: pytest.fail(f"{name} was built on a CPU without AVX2"))
    assert kernels.kernel("mask_upscaling") is None
    assert kernels.unavailable_reason("mask_upscaling") == (
        "this CPU lacks avx512 (avx512f, avx512bw, avx512vl, avx512dq, fma) and avx2 (avx2, fma)")


def test_an_unknown_isa_is_refused_by_name(fresh_loader):
    fresh_loader.setenv(loader.ISA_VARIABLE, "sse4")
    with pytest.raises(ValueError, match=r"SAM_HF_KERNEL_ISA must be one of \['auto', 'avx512', 'avx2'\], got 'sse4'"):
        kernels.kernel_isa()
    with pytest.raises(ValueError, match="SAM_HF_KERNEL_ISA"):
        kernels.kernel("decoder_attention")


def test_each_build_has_its_module_flags_and_folder(fresh_loader, tmp_path):
    """The AVX2 build compiles without any AVX-512 flag (a CPU without AVX-512 must be able to load it) under its own
    module name (both can live in one process) and in its own cache folder; the AVX-512 build keeps its name."""
    fresh_loader.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path))
    for name in loader.REQUIREMENTS:
        avx2, avx512 = loader._cflags(name, "avx2"), loader._cflags(name, "avx512")
        assert {"-mavx2", "-mfma", "-O3"} <= set(avx2) and not any(flag.startswith("-mavx512") for flag in avx2)
        assert {"-mavx512f", "-mavx512bf16", "-mfma", "-O3"} <= set(avx512)
        assert ("-ffp-contract=off" in avx2) == ("-ffp-contract=off" in avx512) == (name == "mask_resize")
        assert (loader._module_name(name, "avx512"), loader._module_name(name, "avx2")) == (name, f"{name}_avx2")
        assert loader._build_dir(name, "avx2") != loader._build_dir(name, "avx512")
        assert loader._build_dir(name, "avx2").name.startswith(f"{name}_avx2-torch")


def test_a_build_is_compiled_for_the_isa_in_use(fresh_loader, tmp_path):
    import torch.utils.cpp_extension as cpp_extension

    fresh_loader.setenv("SAM_HF_KERNEL_CACHE", str(tmp_path))
    fresh_loader.setattr(loader, "cpu_flags", lambda: AVX512)
    calls = []
    fresh_loader.setattr(cpp_extension, "load", lambda name, sources, **kwargs: calls.append((name, kwargs)))
    loader._build("mask_resize")
    fresh_loader.setenv(loader.ISA_VARIABLE, "avx2")
    loader._build("mask_resize")
    (first, first_args), (second, second_args) = calls
    assert (first, second) == ("mask_resize", "mask_resize_avx2")
    assert "-mavx512f" in first_args["extra_cflags"] and "-mavx512f" not in second_args["extra_cflags"]
    assert first_args["build_directory"] != second_args["build_directory"]
    for args in (first_args, second_args):  # the shared headers are staged beside the source
        assert {"vec16.h", "simd.h", "brgemm.h", "mask_resize.cpp"} <= {path.name for path in Path(args["build_directory"]).iterdir()}


def test_the_builds_in_use_report_their_isa():
    """The kernels this CPU loads report the instruction set they were built for (their `isa()`)."""
    if kernel_isas() == ["none"] or kernels.kernel("decoder_attention") is None:
        pytest.skip(f"no kernel here: {kernels.unavailable_reason('decoder_attention')}")
    for name, module in kernels.build_all().items():
        assert module is not None and module.isa() == kernels.kernel_isa(), name


def test_the_command_builds_for_every_isa_the_cpu_runs(fresh_loader, capsys):
    """`python -m sam_hf.kernels --all-isas` (scripts/setup.sh): a section per instruction set, each kernel's line
    naming the build; the process's own choice (and loaded kernels) untouched after."""
    fresh_loader.setattr(loader, "cpu_flags", lambda: AVX512)
    fresh_loader.setenv(loader.ISA_VARIABLE, "auto")
    built = []

    class Built:
        def __init__(self, name):
            self.name, self.built_for = name, loader.kernel_isa()
            built.append((name, self.built_for))

        def isa(self):
            return self.built_for

        def brgemm_usable(self):
            return True

        def bf16_usable(self):
            return False

    fresh_loader.setattr(loader, "_build", Built)
    kernels_main.main(["--all-isas"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[avx512]" and lines[5] == "[avx2]" and len(lines) == 10
    assert all(" built for avx512," in line for line in lines[1:5]) and all(" built for avx2," in line for line in lines[6:])
    assert sorted(built) == sorted((name, isa) for name in loader.REQUIREMENTS for isa in ("avx512", "avx2"))
    assert loader._LOADED == {} and loader.os.environ[loader.ISA_VARIABLE] == "auto"
