#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with sam_hf and its test extras installed.
# torch is pinned first: the CPU build comes from the local wheel, never the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# the optional compiled CPU kernels (attention, mask upscaling and resizing on CPUs with AVX-512 or AVX2): built now, side
# by side (about 90 s per instruction set on two cores, once per environment), rather than inside the first test or run
# that needs them; for every instruction set this CPU runs (the tests check the AVX2 builds on AVX-512 CPUs too); prints
# which ones this machine uses
.venv/bin/python -m sam_hf.kernels --all-isas
