#!/usr/bin/env bash
# Create the benchmark environment benchmarks/.env: trainbus plus the peers it is compared with.
#
# The peers (transformers, mlflow, lightning, comet_ml) are never runtime dependencies of trainbus;
# they live only here. torch is pinned in the same resolver run (a constraints file), so installing
# lightning or transformers cannot swap the torch build underneath the comparison.
#
#   bash benchmarks/setup.sh && benchmarks/.env/bin/python -m benchmarks
#
# Without an NVIDIA GPU pip resolves the CPU build of torch where the package index offers one;
# set TORCH_INDEX_URL to point pip at another index for torch (for example a CPU-only index).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
env_dir="benchmarks/.env"

TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="5.24.0"
MLFLOW_VERSION="3.17.2"
LIGHTNING_VERSION="2.6.6"
ACCELERATE_VERSION="1.15.0"

if [ ! -x "$env_dir/bin/python" ]; then
  "$python" -m venv "$env_dir"
fi
constraints="$env_dir/constraints.txt"
printf 'torch==%s\n' "$TORCH_VERSION" >"$constraints"

pip=("$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints")
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
fi
"${pip[@]}" \
  "torch==$TORCH_VERSION" \
  -e ".[test]" \
  "transformers==$TRANSFORMERS_VERSION" \
  "mlflow==$MLFLOW_VERSION" \
  "lightning==$LIGHTNING_VERSION" \
  "accelerate==$ACCELERATE_VERSION"

"$env_dir/bin/python" - <<'PY'
import importlib.metadata as md

import torch

wanted = open("benchmarks/.env/constraints.txt").read().split("==")[1].strip()
if torch.__version__.split("+")[0] != wanted:
    raise SystemExit(f"setup.sh: torch {torch.__version__} was installed, expected {wanted}")
for name in ("torch", "transformers", "accelerate", "mlflow", "lightning", "tensorboard", "trainbus"):
    print(f"  {name:<13} {md.version(name)}")
PY
echo "benchmark environment ready: $env_dir/bin/python -m benchmarks [--quick] [--only NAME]"
