import pytest
import torch

from references import meta_from_ours, randomize, transformers_from_ours
from sam_hf import SamHfModel, config_for_variant


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
