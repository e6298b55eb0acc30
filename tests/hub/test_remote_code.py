"""sam_hf.hub.remote_code: the import-rewriting step, the generated files, auto_map, and bad input.

Loading the generated code without sam_hf installed is tested in test_hub_sharing.py (a separate process)."""

import ast
import json
import os
import sys
import re

import pytest
from huggingface_hub import ModelCard
from torch.testing import assert_close
from transformers import AutoModel, AutoProcessor
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import sam_hf
from sam_hf.hub.remote_code import CONFIG_AUTO_MAP, add_remote_code, flat_module_name, remote_code_files, rewrite_module_source

STDLIB = set(sys.stdlib_module_names)


def test_rewrite_makes_package_imports_flat_and_keeps_everything_else():
    source = (
        '"""doc"""\nfrom __future__ import annotations\nimport torch\n'
        "from ..configuration import SamHfConfig\n"
        "from .layers import (\n    SamHfMLPBlock,\n    workspace as ws,\n)\n"
        "def f():\n    from ..processing import SamHfProcessor  # lazy: α\n    return 1\n"
    )
    text, needed = rewrite_module_source(source, module="modeling.sam")
    assert needed == ["configuration", "modeling.layers", "processing"]
    assert "from .configuration_sam_hf import SamHfConfig\n" in text
    assert "from .sam_hf_modeling_layers import SamHfMLPBlock, workspace as ws\n" in text
    assert "    from .sam_hf_processing import SamHfProcessor  # lazy: α\n" in text
    assert text.startswith('"""doc"""\nfrom __future__ import annotations\nimport torch\n')
    assert not re.search(r"from \.\.", text)


def test_rewrite_resolves_imports_inside_a_package_init():
    text, needed = rewrite_module_source("from .processor import SamHfProcessor\n", module="processing", is_package=True)
    assert needed == ["processing.processor"] and text == "from .processing_sam_hf import SamHfProcessor\n"


@pytest.mark.parametrize("source, message", [
    ("import sam_hf\n", "absolute `import sam_hf`"),
    ("from sam_hf.configuration import SamHfConfig\n", "absolute `from sam_hf"),
    ("from . import layers\n", "cannot be flattened"),
    ("from ...x import y\n", "above the sam_hf package"),
])
def test_rewrite_refuses_what_cannot_run_flat(source, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        rewrite_module_source(source, module="modeling.sam")


def test_bad_arguments():
    with pytest.raises(TypeError, match="source must be a str"):
        rewrite_module_source(b"x", module="modeling.sam")
    with pytest.raises(ValueError, match="dotted sam_hf module name"):
        flat_module_name("modeling/sam")
    with pytest.raises(TypeError, match="folder must be a path"):
        add_remote_code(folder=3)


def test_add_remote_code_refuses_a_folder_without_a_sam_hf_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        add_remote_code(folder=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(ValueError, match="model_type 'sam_hf'"):
        add_remote_code(folder=tmp_path)


def test_generated_files_are_complete_and_import_only_sam_hf_free_packages(tmp_path):
    """Every file a flat import names is generated; what transformers will ask the environment for is listed."""
    files = remote_code_files()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        for node in ast.walk(ast.parse(text)):  # no import of sam_hf; relative imports only of siblings
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "sam_hf" for alias in node.names), name
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "sam_hf" and node.level in (0, 1), name
    for entry in {ref.split(".")[0] for ref in CONFIG_AUTO_MAP.values()}:
        needed = get_relative_import_files(tmp_path / f"{entry}.py")
        assert all(os.path.exists(path) for path in needed), entry
    external = set().union(*(get_imports(tmp_path / name) for name in files)) - STDLIB
    # what any transformers install has (huggingface_hub is a dependency of transformers itself)
    assert external <= {"numpy", "PIL", "torch", "transformers", "huggingface_hub"}


def test_auto_map_does_not_change_loading_where_sam_hf_is_installed(tmp_path):
    """Without trust_remote_code, a folder with remote code still loads sam_hf's own classes, same outputs."""
    model = sam_hf.SamHfModel(sam_hf.config_for_variant("tiny")).eval()
    model.save_pretrained(tmp_path)
    written = add_remote_code(folder=tmp_path)
    assert {"configuration_sam_hf.py", "modeling_sam_hf.py", "processing_sam_hf.py"} <= set(written)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == CONFIG_AUTO_MAP
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_sam_hf.SamHfProcessor"}
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is sam_hf.SamHfModel
    assert type(AutoProcessor.from_pretrained(tmp_path)) is sam_hf.SamHfProcessor
    assert_close(loaded.state_dict(), model.state_dict())


def test_push_to_hub_checks_its_arguments():
    model = sam_hf.SamHfModel(sam_hf.config_for_variant("tiny"))
    with pytest.raises(TypeError, match="model must be a SamHfModel"):
        sam_hf.hub.push_to_hub(model=object(), repo_id="org/x")
    with pytest.raises(ValueError, match="repo_id must be"):
        sam_hf.hub.push_to_hub(model=model, repo_id="a/b/c")
    with pytest.raises(TypeError, match="model_card must be"):
        sam_hf.hub.push_to_hub(model=model, repo_id="org/x", model_card="# card")
    with pytest.raises(TypeError, match="remote_code must be a bool"):
        sam_hf.hub.push_to_hub(model=model, repo_id="org/x", model_card=ModelCard("---\n---\n"), remote_code="yes")


def test_kernel_sources_are_written_into_the_remote_code():
    """transformers fetches Python modules only: the generated `kernels.sources` holds the C++ texts themselves,
    the package's `kernel_sources()` to the byte, and the loader imports it."""
    from sam_hf.kernels.sources import kernel_sources

    files = remote_code_files()
    generated: dict = {}
    exec(compile(files["sam_hf_kernels_sources.py"], "sam_hf_kernels_sources.py", "exec"), generated)
    assert generated["kernel_sources"]() == kernel_sources() and any(name.endswith(".cpp") for name in kernel_sources())
    assert "from .sam_hf_kernels_sources import kernel_sources" in files["sam_hf_kernels_loader.py"]
