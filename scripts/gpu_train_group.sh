#!/usr/bin/env bash
# Train the whole seed group on one GPU machine, all seeds at once (one process per seed), and pack
# each trained model directory into $OUT (or ./gpu_out) for bringing back.
#
# Prepared for the reference group (issue 3). On the GPU machine the image has torch, transformers,
# tokenizers, safetensors, numpy, click, tqdm and PyYAML; pydantic must travel as wheels in .whl/
# (see .library/device/README.md). data/tokens must travel too (it is byte-identical everywhere, and
# DVC checks it): carry `data/tokens` and `.whl`.
#
# Back here: unpack into models/, then `dvc commit -f train` records the outputs against the
# committed params.yaml (train.device: cuda) and token set, and `dvc push` stores them in dvc-remote/.
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
seeds=$(python3 -c "from universal_neurons.config import load_params; print(*load_params().train.seeds)")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
start=$(date +%s)
for seed in $seeds; do
  python3 -m universal_neurons train --seed "$seed" > "$OUT/train_seed$seed.log" 2>&1 &
done
wait
echo "trained seeds: $seeds in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
for seed in $seeds; do
  tar -czf "$OUT/seed$seed.tar.gz" -C models "seed$seed"
  tail -n 12 "$OUT/train_seed$seed.log" | grep -E 'heldout_loss|tokens|wall_time' || true
done
