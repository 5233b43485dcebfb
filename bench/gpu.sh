#!/usr/bin/env bash
# The device check: run as-is on a lent GPU machine (the device tool's `run`), from the repo
# root. The machine's image has jax (CUDA), flax, optax, numpy and rich; jaxobs runs from this
# checkout through PYTHONPATH, nothing is installed or fetched. Prints JSON lines; copies them
# to $OUT when the device tool provides it. About 4 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# One process at a time holds the GPU: no preallocation of 75% of its memory per process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$py" -c 'import jax; print({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]})' \
  | tee "$out/devices.txt"
# Observing overhead against the bare step, both models, every variant (median of
# interleaved per-round ratios, spread, compile times). Steps are short on a GPU: more of them.
timeout 180 "$py" bench/overhead.py --rounds 10 --steps 50 --compile-repeats 1 \
  | tee "$out/overhead.json" || echo '{"overhead": "failed or timed out"}'
# Fusions, reductions and reads of the observed trees in the optimized HLO, per level.
timeout 80 "$py" bench/hlo.py --model mlp | tee "$out/hlo_mlp.json" \
  || echo '{"hlo": "mlp failed or timed out"}'
timeout 40 "$py" bench/hlo.py --model cnn --variants bare,detailed,expert,plain \
  | tee "$out/hlo_cnn.json" || echo '{"hlo": "cnn failed or timed out"}'
