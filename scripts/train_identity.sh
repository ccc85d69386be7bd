#!/usr/bin/env bash
# Does a change of the train stage's code change the weights? Trains each seed of params.yaml
# with the code of two git revisions, up to the second checkpoint (float32 copies), and compares
# the bytes. Run it before `dvc commit train` records outputs against edited train code.
#
#   scripts/train_identity.sh OLD_REV [NEW_REV]     (NEW_REV default: the working tree)
#
# Needs data/tokens (dvc checkout) and the project's .venv. About 1.5 minutes per seed and
# revision on one core of the default machine; the two revisions of a seed run in parallel.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
old=${1:?usage: scripts/train_identity.sh OLD_REV [NEW_REV]}; new=${2:-}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
export PATH="$root/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
checkpoint=$(python -c "import yaml; print(sorted(yaml.safe_load(open('params.yaml'))['train']['checkpoint_tokens'])[1])")
seeds=$(python -c "import yaml; print(*yaml.safe_load(open('params.yaml'))['train']['seeds'])")

tree() {  # tree NAME REV: the code of REV (or of the working tree) in $work/NAME
  mkdir -p "$work/$1"
  if [ -n "$2" ]; then
    local paths=src; git cat-file -e "$2:stages" 2>/dev/null && paths="src stages"
    git archive "$2" $paths | tar -x -C "$work/$1"
  else cp -r src stages "$work/$1/"; fi
}
train_command() {  # NAME: the train stage of that code (stages/train.py, or the older CLI's)
  if [ -f "$work/$1/stages/train.py" ]; then echo "python -P $work/$1/stages/train.py"
  else echo "universal-neurons train"; fi
}
train_until_checkpoint() {  # NAME SEED: train with that code until the checkpoint exists
  local dir="$work/$1/run$2"; mkdir -p "$dir/data"; ln -s "$root/data/tokens" "$dir/data/tokens"
  python -c "import yaml; p = yaml.safe_load(open('params.yaml')); p['train']['checkpoint_dtype'] = 'float32'; yaml.safe_dump(p, open('$dir/params.yaml', 'w'))"
  local command; command=$(train_command "$1")
  (cd "$dir" && PYTHONPATH="$work/$1/src" exec $command --seed "$2" >train.log 2>&1) &
  local pid=$! found=""
  while [ -z "$found" ]; do
    sleep 3; kill -0 $pid 2>/dev/null || { echo "train ($1, seed $2) stopped:"; tail -5 "$dir/train.log"; exit 1; }
    found=$(ls "$dir"/models/.*/*/checkpoints/tokens_"$checkpoint"/checkpoint.json 2>/dev/null || true)
  done
  sleep 5; mkdir -p "$dir/out"; cp -r "$(dirname "$(dirname "$found")")"/* "$dir/out/"; kill $pid
}
tree old "$old"; tree new "$new"
status=0
for seed in $seeds; do
  train_until_checkpoint old "$seed" & a=$!; train_until_checkpoint new "$seed" & b=$!; wait $a $b
  if diff -r "$work/old/run$seed/out" "$work/new/run$seed/out" >/dev/null; then
    echo "seed $seed: checkpoints up to $checkpoint tokens byte-identical"
  else echo "seed $seed: DIFFERENT weights"; status=1; fi
done
exit $status
