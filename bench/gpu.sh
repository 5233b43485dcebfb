#!/usr/bin/env bash
# The device check: run as-is on a lent GPU machine (the device tool's `run`), from the repo
# root. The machine's image has jax (CUDA), flax, optax, numpy and rich; jaxobs runs from this
# checkout through PYTHONPATH, nothing is installed or fetched. Prints JSON lines; copies them
# to $OUT when the device tool provides it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import jax; print({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]})' \
  | tee "$out/devices.txt"
# Observing overhead against the bare step (median of interleaved per-round ratios).
timeout 420 python3 bench/overhead.py --rounds 10 --steps 50 | tee "$out/overhead.json"
