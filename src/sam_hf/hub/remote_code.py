"""Remote code: a saved sam_hf folder that loads with `trust_remote_code=True` where sam_hf is not installed.

transformers' remote-code loader imports the module named in `auto_map` (e.g. `modeling_sam_hf.SamHfModel`)
from the repository and follows its `from .x import y` imports to sibling files of the repository; it knows
no sub-packages. sam_hf's sources use package-relative imports (`from ..configuration import SamHfConfig`), so
`add_remote_code` generates flat, self-contained modules from the installed sources: every import of a sam_hf
module (top-level or inside a function) becomes `from .<flat name> import ...` and the imported module is
generated too, transitively. Nothing is copied by hand; the files are regenerated from the real sources
on every call. An absolute `import sam_hf` in those sources, or an import form the flat layout cannot express,
is refused with a `ValueError`. transformers fetches Python modules only, so the compiled kernels' C++ sources are
written into the generated `kernels.sources` module (`embedded_kernel_sources`), whose `kernel_sources()` then returns
them as the package's does: the kernels build from remote code too.

`auto_map` goes into config.json (AutoConfig, AutoModel, AutoModelForMaskGeneration, AutoProcessor,
AutoImageProcessor) and into the processor's config (AutoProcessor, and AutoImageProcessor for the image
processor it holds).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/sam_hf

# sam_hf modules that auto_map names, and the flat module each becomes in a repository.
ENTRY_MODULES = {
    "configuration": "configuration_sam_hf",
    "modeling.sam": "modeling_sam_hf",
    "processing.processor": "processing_sam_hf",
}
CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_sam_hf.SamHfConfig",
    "AutoModel": "modeling_sam_hf.SamHfModel",
    "AutoModelForMaskGeneration": "modeling_sam_hf.SamHfModel",
    "AutoProcessor": "processing_sam_hf.SamHfProcessor",
    # The image processor is named through the processor's module (which imports it): for a local folder
    # transformers loads each named module, with its imports, into a folder keyed by their hash, so naming the
    # image processor's own module would give a second SamHfImageProcessor class that SamHfProcessor refuses.
    "AutoImageProcessor": "processing_sam_hf.SamHfImageProcessor",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": CONFIG_AUTO_MAP["AutoProcessor"]}
IMAGE_PROCESSOR_AUTO_MAP = {"AutoImageProcessor": CONFIG_AUTO_MAP["AutoImageProcessor"]}


def flat_module_name(module: str) -> str:
    """Flat module name of a sam_hf module ("modeling.layers" -> "sam_hf_modeling_layers")."""
    if not isinstance(module, str) or not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"module must be a dotted sam_hf module name like 'modeling.layers', got {module!r}")
    return ENTRY_MODULES.get(module, "sam_hf_" + module.replace(".", "_"))


def _source_path(module: str, package_dir: Path) -> tuple[Path, bool]:
    """(file, is_package) of a sam_hf module."""
    base = package_dir.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    raise ValueError(f"sam_hf has no module {module!r} (looked for {base}.py and {base}/__init__.py)")


def _absolute_target(node: ast.ImportFrom, *, module: str, is_package: bool, where: str) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(package):
        raise ValueError(f"{where}: relative import goes above the sam_hf package")
    base = package[: len(package) - (node.level - 1)]
    if node.module is None:
        raise ValueError(f"{where}: `from {'.' * node.level} import ...` cannot be flattened; import from a module")
    return ".".join(base + [node.module])


def rewrite_module_source(source: str, *, module: str, is_package: bool = False) -> tuple[str, list[str]]:
    """Rewrite the sam_hf imports of one module's source into flat relative imports.

    Returns the new source and the sam_hf modules it imports (dotted, relative to the package). Text outside
    the rewritten import statements is unchanged.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    flat_module_name(module)  # validates the name
    tree = ast.parse(source)
    edits: list[tuple[ast.ImportFrom, str]] = []
    needed: list[str] = []
    for node in ast.walk(tree):
        where = f"sam_hf.{module} line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sam_hf" for a in node.names):
            raise ValueError(f"{where}: absolute `import sam_hf` cannot run without sam_hf; use a relative import")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if (node.module or "").split(".")[0] == "sam_hf":
                raise ValueError(f"{where}: absolute `from sam_hf... import` cannot run without sam_hf; use a relative import")
            continue
        target = _absolute_target(node, module=module, is_package=is_package, where=where)
        names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
        edits.append((node, f"from .{flat_module_name(target)} import {names}"))
        if target not in needed:
            needed.append(target)
    # Splice on UTF-8 bytes: ast column offsets count bytes.
    lines = source.encode("utf-8").splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode("utf-8")
    for node, text in sorted(edits, key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True):
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        data = data[:begin] + text.encode("utf-8") + data[end:]
    return data.decode("utf-8"), needed


def embedded_kernel_sources(package_dir: Path) -> str:
    """The source of the flat `kernels.sources` module: the package's `kernel_sources()` with the texts written in."""
    from ..kernels.sources import kernel_sources

    entries = "".join(f"    {name!r}: {text!r},\n" for name, text in kernel_sources(package_dir / "kernels").items())
    return (
        '"""The compiled kernels\' C++ sources, written in for remote code (see sam_hf/kernels/sources.py)."""\n\n'
        f"KERNEL_SOURCES = {{\n{entries}}}\n\n\n"
        "def kernel_sources() -> dict[str, str]:\n"
        '    """{file name: text} of the kernels\' sources and headers."""\n'
        "    return dict(KERNEL_SOURCES)\n"
    )


# sam_hf modules whose flat form is generated rather than rewritten from their source
GENERATED_MODULES = {"kernels.sources": embedded_kernel_sources}


def remote_code_files(*, package_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Flat file name -> source for the entry modules and every sam_hf module they import (transitively)."""
    root = PACKAGE_DIR if package_dir is None else Path(package_dir)
    if not (root / "__init__.py").is_file():
        raise ValueError(f"package_dir must be the sam_hf package folder, got {root}")
    files: dict[str, str] = {}
    queue, seen = list(ENTRY_MODULES), set(ENTRY_MODULES)
    while queue:
        module = queue.pop(0)
        path, is_package = _source_path(module, root)
        if module in GENERATED_MODULES:
            text, needed = GENERATED_MODULES[module](root), []
        else:
            text, needed = rewrite_module_source(path.read_text(encoding="utf-8"), module=module, is_package=is_package)
        header = (f"# Generated by sam_hf.hub.remote_code from sam_hf/{path.relative_to(root).as_posix()} "
                  "for trust_remote_code loading; regenerate it, do not edit.\n")
        files[f"{flat_module_name(module)}.py"] = header + text
        for target in needed:
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return files


def _update_json(path: Path, update) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_remote_code(*, folder: str | os.PathLike) -> list[str]:
    """Make a folder written by `SamHfModel.save_pretrained` loadable with `trust_remote_code=True`.

    Writes the flat modules next to config.json and adds `auto_map` to config.json and to the processor's
    config (processor_config.json or preprocessor_config.json). Returns the names of the modules written.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path, got {type(folder).__name__}")
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"folder must hold a saved sam_hf model (config.json), got {folder}")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type != "sam_hf":
        raise ValueError(f"config.json must have model_type 'sam_hf', got {model_type!r} in {config}")
    files = remote_code_files()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    _update_json(config, lambda data: data.setdefault("auto_map", {}).update(CONFIG_AUTO_MAP))

    def processor_auto_map(data: dict) -> None:
        if "image_processor" in data:  # a processor config holding its image processor
            data.setdefault("auto_map", {}).update(PROCESSOR_AUTO_MAP)
            data["image_processor"].setdefault("auto_map", {}).update(IMAGE_PROCESSOR_AUTO_MAP)
        else:
            data.setdefault("auto_map", {}).update({**PROCESSOR_AUTO_MAP, **IMAGE_PROCESSOR_AUTO_MAP})

    for name in ("processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            _update_json(folder / name, processor_auto_map)
    return sorted(files)
