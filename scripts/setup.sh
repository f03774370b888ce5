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
# The test environment holds every tracker's SDK, and resolving it from scratch costs minutes. On
# the Python it was last resolved with (CPython 3.11), scripts/constraints-test.txt is that whole
# environment: it is installed as listed, without resolving, and `pip check` then proves it
# complete (tests/test_packaging.py keeps every requirement of pyproject in it).
install_test_env() {
  if [ "$locked" = 1 ]; then
    # torch is what the step above chose (a CUDA build is kept), never the listed CPU one
    grep -v '^torch==' scripts/constraints-test.txt > .venv/constraints-test.txt
    "${pip[@]}" --no-deps -r .venv/constraints-test.txt
    "${pip[@]}" --no-deps -e .
    .venv/bin/python -m pip check >/dev/null || {
      echo "setup.sh: scripts/constraints-test.txt is incomplete; regenerate it (see its header)" >&2
      .venv/bin/python -m pip check >&2
      exit 1
    }
  else
    "${pip[@]}" -e ".[test,lint]"
  fi
}
locked=0
if [ "$profile" != demo ] && .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  locked=1
fi
case "$profile" in
  demo) "${pip[@]}" -e ".[demo]" ;;
  test) install_test_env ;;
  bench) install_test_env ;;
  *) echo "setup.sh: unknown profile '$profile' (expected demo, test or bench)" >&2; exit 2 ;;
esac
echo "trainbus is set up in .venv ($profile)"
