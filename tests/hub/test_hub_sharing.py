"""Hub sharing end to end against the local Hub emulator (tests/hub/fake_hub.py), with real client processes.

A tiny model is pushed once per module by a publisher process (the transformers way, and sam_hf's one-commit
push with remote code); consumer processes with their own empty caches load it back by repo id, online, then
offline, then without sam_hf installed. Every output is compared with the publishing model's, computed here.

What this proves: our files (weights, config, processor, card, remote code) and huggingface_hub 2.4's client
protocol round-trip (create repo, preupload, LFS batch upload of the safetensors, commit, revision resolution,
HEAD/GET downloads, tree listings, the cache and offline mode) as far as the emulator speaks the Hub's protocol.
What it does not prove: the real Hub's authentication and permissions, its LFS/Xet storage (Xet is off in the
clients), server-side validation, rate limits, or anything the emulator answers more leniently than the Hub.
"""

import json
import os

import pytest
import torch

import sam_hf
from sam_hf import kernels
from hub.clients import client_env, closed_port_url, run_client
from hub.fake_hub import FakeHub
from references import randomize

REPO, REMOTE_REPO = "org/sam-hf-tiny", "org/sam-hf-tiny-remote"

# Inputs and checks shared by this process (to compute the expected outputs) and the clients (exec'd there).
COMMON = r'''
import json, sys
import numpy as np
import torch
from PIL import Image
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForMaskGeneration, AutoProcessor, pipeline

PIPELINE_KWARGS = dict(points_per_batch=64, points_per_crop=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)

def test_image():
    return Image.fromarray(np.random.RandomState(0).randint(0, 256, (96, 128, 3), dtype=np.uint8))

def run_model(model, processor):
    inputs = processor(test_image(), input_points=[[[40, 50], [90, 20]]], return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(**inputs)
    return {"pred_masks": out.pred_masks, "iou_scores": out.iou_scores}

def run_pipeline(generator):
    result = generator(test_image(), **PIPELINE_KWARGS)
    return {"pipeline_masks": torch.as_tensor(np.stack(result["masks"])), "pipeline_scores": torch.as_tensor(result["scores"])}

def check(got, expected):
    for key, value in got.items():
        assert_close(value, expected[key], msg=lambda m: f"{key}: {m}")
'''

PUBLISH = COMMON + r'''
import sam_hf
from huggingface_hub import HfApi, ModelCard
source, card_path = sys.argv[1], sys.argv[2]
model = sam_hf.SamHfModel.from_pretrained(source)
card = ModelCard.load(card_path)
# The transformers way: push the card first (model.push_to_hub keeps the repo's README.md), then the model;
# SamHfModel.save_pretrained, which push_to_hub calls, also writes the processor.
HfApi().create_repo("org/sam-hf-tiny")
card.push_to_hub("org/sam-hf-tiny")
model.push_to_hub("org/sam-hf-tiny")
# sam_hf's push: model, processor, card and remote code in one commit.
sam_hf.hub.push_to_hub(model=model, repo_id="org/sam-hf-tiny-remote", model_card=card, remote_code=True)
'''

CONSUME = COMMON + r'''
import sam_hf
repo, expected, online = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3] == "online"
processor = AutoProcessor.from_pretrained(repo)
loaded = {}
for name, load in [("SamHfModel", sam_hf.SamHfModel.from_pretrained), ("AutoModel", AutoModel.from_pretrained),
                   ("AutoModelForMaskGeneration", AutoModelForMaskGeneration.from_pretrained)]:
    model = load(repo)
    check(run_model(model, processor), expected)
    loaded[name] = type(model).__name__
check(run_pipeline(pipeline("mask-generation", model=repo)), expected)
if online:  # the task comes from the card's pipeline_tag (model_info); offline, transformers refuses to infer it
    generator = pipeline(model=repo)
    check(run_pipeline(generator), expected)
    loaded["pipeline without task"] = generator.task
print(json.dumps({"loaded": loaded, "processor": type(processor).__name__}))
'''

# Hide sam_hf (its editable-install path entry and any import hook), and prove it is gone, before anything else.
WITHOUT_SAM_HF = r'''
import importlib, importlib.util, os, sys
_src = os.path.realpath(sys.argv[1])
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _src]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") + type(f).__name__).lower()]
importlib.invalidate_caches()
if importlib.util.find_spec("sam_hf") is not None:
    raise SystemExit("sam_hf is still importable")
'''

REMOTE = WITHOUT_SAM_HF + COMMON + r'''
expected = torch.load(sys.argv[2])
report = {}
for source in sys.argv[3:]:  # a local folder, then a repo id on the fake Hub
    model = AutoModel.from_pretrained(source, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    check(run_model(model, processor), expected)
    check(run_pipeline(pipeline("mask-generation", model=source, trust_remote_code=True)), expected)
    report[source] = [type(model).__module__, type(processor).__module__]
# the compiled kernels' C++ sources are written into the repo's modules: the loader builds (or finds) them from those
loader = next(m for name, m in sys.modules.items() if name.endswith(".sam_hf_kernels_loader"))
module = loader.kernel("decoder_attention")
report["kernel"] = [module is not None, loader.unavailable_reason("decoder_attention"),
                    None if module is None else os.path.dirname(module.__file__)]
try:
    import sam_hf
    raise SystemExit("sam_hf was importable")
except ModuleNotFoundError:
    pass
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The fake Hub with REPO and REMOTE_REPO pushed by a publisher process, the expected outputs, the paths."""
    root = tmp_path_factory.mktemp("hub_sharing")
    model = randomize(sam_hf.SamHfModel(sam_hf.config_for_variant("tiny")), seed=7).eval()
    model.save_pretrained(root / "source")
    common: dict = {}
    exec(COMMON, common)
    processor = sam_hf.SamHfProcessor(image_processor=sam_hf.SamHfImageProcessor(longest_edge=128))
    expected = {**common["run_model"](model, processor),
                **common["run_pipeline"](common["pipeline"]("mask-generation", model=str(root / "source")))}
    assert expected["pipeline_masks"].shape[0] > 0  # the comparison is not vacuous
    torch.save(expected, root / "expected.pt")
    card = sam_hf.hub.training_model_card(model_name="sam-hf-tiny", config=model.config, repo_id=REPO,
                                          command="python examples/finetune.py --synthetic 8", metrics={"eval_box_miou": 0.5})
    card.save(root / "README.md")
    with FakeHub() as hub:
        run_client(PUBLISH, env=client_env(hub_url=hub.url, hf_home=root / "publisher_home"), cwd=root,
                   args=[root / "source", root / "README.md"])
        yield {"hub": hub, "root": root, "card": card, "expected": root / "expected.pt"}


@pytest.fixture(scope="module")
def online_report(published):
    """A consumer process with an empty cache loads REPO by id from the running fake Hub (fills its cache)."""
    root, hub = published["root"], published["hub"]
    out = run_client(CONSUME, env=client_env(hub_url=hub.url, hf_home=root / "consumer_home"), cwd=root,
                     args=[REPO, published["expected"], "online"])
    return json.loads(out.strip().splitlines()[-1])


def test_push_writes_weights_processor_and_card_in_the_repo(published):
    """The repo holds config, LFS-stored safetensors, processor config and our card, after either push.

    Proves what the two push paths upload. Does not prove the real Hub would accept or render the card."""
    hub, card = published["hub"], published["card"]
    for repo in (REPO, REMOTE_REPO):
        files = hub.files(repo)
        assert {"config.json", "model.safetensors", "processor_config.json", "README.md"} <= set(files)
        assert hub.repos[repo].resolve("main")[1]["model.safetensors"].lfs  # went through the LFS batch API
        readme = files["README.md"].decode()
        assert "pipeline_tag: mask-generation" in readme and "python examples/finetune.py --synthetic 8" in readme
        assert card.data.to_dict()["tags"] == [t for t in card.data.to_dict()["tags"] if f"- {t}" in readme]
    assert "auto_map" not in json.loads(hub.files(REPO)["config.json"])
    remote = hub.files(REMOTE_REPO)
    assert json.loads(remote["config.json"])["auto_map"]["AutoModel"] == "modeling_sam_hf.SamHfModel"
    assert {"configuration_sam_hf.py", "modeling_sam_hf.py", "processing_sam_hf.py"} <= set(remote)
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in hub.requests


def test_model_processor_and_pipeline_load_from_repo_id(online_report):
    """SamHfModel / AutoModel / AutoModelForMaskGeneration / AutoProcessor / pipeline from the repo id give the
    publishing model's outputs; `pipeline(model=repo)` infers "mask-generation" from the card's pipeline_tag.

    Proves download, revision resolution and caching with huggingface_hub's real client against the emulator."""
    assert set(online_report["loaded"].values()) == {"SamHfModel", "mask-generation"}
    assert online_report["processor"] == "SamHfProcessor"


def test_same_loads_offline_from_the_cache(published, online_report):
    """With HF_HUB_OFFLINE=1 and no Hub reachable, everything loads from the cache the online run filled.

    The endpoint is a closed port and the emulator sees no request: nothing was fetched. Proves the cache layout
    our files produce is complete for offline use; does not prove anything about cache eviction or partial caches."""
    root, hub = published["root"], published["hub"]
    seen = len(hub.requests)
    run_client(CONSUME, env=client_env(hub_url=closed_port_url(), hf_home=root / "consumer_home", offline=True),
               cwd=root, args=[REPO, published["expected"], "offline"])
    assert len(hub.requests) == seen


def test_remote_code_loads_without_sam_hf(published):
    """With sam_hf not importable, AutoModel / AutoProcessor / pipeline with trust_remote_code=True load the
    generated code from a local folder and from the repo id, and give the publishing model's outputs; the compiled
    kernels build from the C++ sources written into that code (here: the package's own build, found).

    Proves the generated modules are self-contained (only torch, numpy, PIL, transformers from site-packages) and
    that transformers 5.23's dynamic-module loader resolves their flat imports, locally and from a Hub repo.
    Does not prove older or newer transformers versions load them."""
    root, hub = published["root"], published["hub"]
    local = root / "remote_local"
    sam_hf.SamHfModel.from_pretrained(root / "source").save_pretrained(local)
    sam_hf.hub.add_remote_code(folder=local)
    src = __import__("pathlib").Path(sam_hf.__file__).resolve().parent.parent
    out = run_client(REMOTE, env=client_env(hub_url=hub.url, hf_home=root / "remote_home"), cwd=root,
                     args=[src, published["expected"], local, REMOTE_REPO])
    report = json.loads(out.strip().splitlines()[-1])
    remote_kernel, reason, folder = report.pop("kernel")
    here = kernels.kernel("decoder_attention")  # what the installed package gives on this machine
    assert remote_kernel == (here is not None) and reason == kernels.unavailable_reason("decoder_attention")
    if here is not None:  # the same sources, the same torch: the package's build, found by the remote code
        assert folder == os.path.dirname(here.__file__)
    assert len(report) == 2
    for model_module, processor_module in report.values():
        assert model_module.startswith("transformers_modules.") and model_module.endswith(".modeling_sam_hf")
        assert processor_module.startswith("transformers_modules.") and processor_module.endswith(".processing_sam_hf")
