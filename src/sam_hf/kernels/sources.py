"""The compiled kernels' C++ sources as text: `kernel_sources()` -> {file name: text} for every .cpp and .h here.

In the package they are read from the files beside this module. A Hub repository's remote code holds Python modules
only (transformers fetches nothing else), so `hub/remote_code.py` generates this module with the texts written in and
the same `kernel_sources()`: the loader compiles the kernels from either (into the same build folder, the texts being
the same).
"""

from __future__ import annotations

from pathlib import Path

_FOLDER = Path(__file__).resolve().parent


def kernel_sources(folder: Path | None = None) -> dict[str, str]:
    """{file name: text} of the kernels' sources (`*.cpp`) and the headers they include (`*.h`) in `folder` (default:
    this package's), read as they are."""
    folder = _FOLDER if folder is None else folder
    return {path.name: path.read_bytes().decode("utf-8") for path in sorted([*folder.glob("*.cpp"), *folder.glob("*.h")])}
