import pytest
import torch

from kernel_builds import kernel_isas, kernels_for_isa
from references import meta_from_ours, randomize, transformers_from_ours
from sam_hf import SamHfModel, config_for_variant
from sam_hf import kernels
from sam_hf.kernels import kernel, loader, unavailable_reason
from sam_hf.modeling import kernel_inputs, mask_upscaling


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomize(SamHfModel(config_for_variant("tiny")), seed=1).eval()


@pytest.fixture(scope="module")
def meta_tiny(tiny_model):
    return meta_from_ours(tiny_model)


@pytest.fixture(scope="module")
def transformers_tiny(tiny_model):
    return transformers_from_ours(tiny_model)


@pytest.fixture(params=["kernel", "pytorch"])
def decoder_path(request, monkeypatch):
    """Runs a test twice: with the decoder's compiled kernels (`sam_hf.kernels`: attention and mask upscaling, fp32 on
    AVX-512 CPUs, bf16 where AVX512-BF16) and with PyTorch's path alone."""
    if request.param == "pytorch":
        monkeypatch.setattr(kernel_inputs, "kernel_for", lambda name, dtype: None)
        monkeypatch.setattr(mask_upscaling, "kernel_for", lambda name, dtype: None)
    elif kernel("decoder_attention") is None:
        pytest.skip(f"the decoder_attention kernel cannot be used here: {unavailable_reason('decoder_attention')}")
    return request.param


@pytest.fixture(scope="module", params=kernel_isas())
def module(request):
    """The compiled kernel named by the test file's KERNEL, built for each instruction set this CPU runs (AVX-512 and
    AVX2 builds on an AVX-512 CPU: `kernel_isas`), the file's tests run once per build with sam_hf's `kernel()`
    returning that build's kernels; they skip where this machine cannot use it (no AVX2, SAM_HF_KERNELS=0), and fail
    where it should build and does not."""
    name = request.module.KERNEL
    with kernels_for_isa(request.param):
        reason = loader._why_not(name)
        if reason is not None:
            pytest.skip(f"the {name} kernel cannot be used here: {reason}")
        built = kernels.kernel(name)
        assert built is not None, f"the {name} kernel should build on this machine: {kernels.unavailable_reason(name)}"
        assert built.isa() == request.param
        yield built


@pytest.fixture(params=[1, 2])
def threads(request):
    """One thread, and two (the kernels split their work: prompts, rows or blocks over threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
