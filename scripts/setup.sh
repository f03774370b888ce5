#!/usr/bin/env bash
# Set up trainbus in ./.venv. Usage: bash scripts/setup.sh [demo|test|bench]
#   demo  (default) runtime + what the demo needs (scikit-learn's bundled digits, TensorBoard)
#   test  runtime + test and lint tools (pytest, mlflow server, TensorBoard reader, ...)
# torch: an existing install is kept. Otherwise, without an NVIDIA GPU, torch==2.13.0 is pinned;
# where your package index serves CUDA wheels, add PyTorch's CPU index first to get the small CPU
# build: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-demo}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" "torch==2.13.0"
  fi
fi
# The test environment holds every tracker's SDK: resolving it from scratch costs minutes, so on
# the Python it was last resolved with, the versions it passed with are the constraints.
constraints=()
if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  constraints=(-c scripts/constraints-test.txt)
fi
case "$profile" in
  demo) "${pip[@]}" -e ".[demo]" ;;
  test) "${pip[@]}" "${constraints[@]}" -e ".[test,lint]" ;;
  bench) "${pip[@]}" "${constraints[@]}" -e ".[test,lint]" ;;
  *) echo "setup.sh: unknown profile '$profile' (expected demo, test or bench)" >&2; exit 2 ;;
esac
echo "trainbus is set up in .venv ($profile)"
