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
# the optional compiled CPU kernels (attention and mask upscaling on CPUs with AVX-512): built now, side by side (about
# 45 s on two cores, once per environment), rather than one by one inside the first test or run that needs them; prints
# which ones this machine uses
.venv/bin/python -m sam_hf.kernels
