#!/usr/bin/env bash
# The CPU recipe end to end: the commands that make the shipped transformer checkpoints/t2v_cpu/.
#   configs/cpu/recipe.sh RUN_DIR [STEP ...]   steps: data shards stage1 stage2 stage3 stage3_more stage3_noise
#                                               stage3_noise_more
#                                               (default: all)
# Every step is resumable: run it again with the same RUN_DIR after an interruption and it goes on
# (rendered clips and complete shards are kept, training resumes from checkpoints/latest). A step
# that finished writes RUN_DIR/<step>.done and is skipped next time. Keep RUN_DIR outside the work
# tree (e.g. ~/.cache/loong/runs/t2v_cpu): it grows to ~10 GB of clips, shards and checkpoints.
# RECIPE_SET="section.key=value ..." is appended to every job's command line: a variant of the
# recipe in its own RUN_DIR (e.g. RECIPE_SET="loss.mode=token_mean", the plain token mean).
set -euo pipefail
cd "$(dirname "$0")/../.."
ALL_STEPS="data shards stage1 stage2 stage3 stage3_more stage3_noise stage3_noise_more"
[ $# -ge 1 ] || { echo "usage: $0 RUN_DIR [STEP ...], steps: $ALL_STEPS (default: all)" >&2; exit 2; }
R=$(realpath -m "$1"); shift
STEPS=${*:-$ALL_STEPS}
mkdir -p "$R"
PY=${PYTHON:-.venv/bin/python}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export LOONG_CACHE_DIR=${LOONG_CACHE_DIR:-$PWD/.cache/loong} RAY_USAGE_STATS_ENABLED=0
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824  # as the Makefile (loong_dist/cli.py)
CFG=configs/cpu/loong.yaml  # synthetic.held_out: the appearances no step below ever trains on
read -r -a SET <<< "${RECIPE_SET:-}"

# Corpora: one per clip length, each rendered with its own seed (no clip repeats another).
# - images: enough that stage 1 shows each about once and a half (8,000 shown 7.5 times each
#   were learnt by heart: objects cost 1.8 nats a cell on them, 3.6 on new ones);
# - clips: half of them still, whose later latent frames repeat the first code for code (with
#   1 in 5 still, stage 2 had not learnt to carry an object from frame to frame by step 1,200).
# name  frames  clips  seed  still share
CORPORA="images 1 40000 21 null
clips17 17 4800 22 0.5
clips65 65 2400 23 0.5"

step_data() {
  while read -r name frames n seed still; do
    $PY -m data_prep.synthetic --config $CFG --n "$n" --frames "$frames" --size 128 --seed "$seed" \
      --out "$R/data/$name" synthetic.still_share="$still" "${SET[@]}"
  done <<< "$CORPORA"
  $PY -m data_prep.text_tokenizer --config $CFG --manifest "$R/data/images/manifest.jsonl" \
    --out "$R/data/text/text.model" "${SET[@]}"
}

step_shards() {
  while read -r name frames n seed still; do
    $PY -m data_prep.pretokenize --config $CFG --manifest "$R/data/$name/manifest.jsonl" \
      --tokenizer checkpoints/tokenizer_cpu/tokenizer.safetensors --text-tokenizer "$R/data/text/text.model" \
      --frames "$frames" --size 128 --out "$R/shards/$name" pretokenize.progress=false "${SET[@]}"
  done <<< "$CORPORA"
}

SHARDS="$R/shards/images,$R/shards/clips17,$R/shards/clips65"
step_stage1() {
  $PY -m jobs.train --config configs/cpu/stage1_image.yaml --shards "$SHARDS" --out "$R/stage1_image" "${SET[@]}"
}
step_stage2() {
  $PY -m jobs.train --config configs/cpu/stage2_short.yaml --shards "$SHARDS" --out "$R/stage2_short" \
    train.init_from="$R/stage1_image" "${SET[@]}"
}
step_stage3() {
  $PY -m jobs.train --config configs/cpu/stage3_long.yaml --shards "$SHARDS" --out "$R/stage3_long" \
    train.init_from="$R/stage2_short" "${SET[@]}"
}
step_stage3_more() {  # stage 3 continued from its weights: other batches, half the peak lr
  $PY -m jobs.train --config configs/cpu/stage3_more.yaml --shards "$SHARDS" --out "$R/stage3_more" \
    train.init_from="$R/stage3_long" "${SET[@]}"
}
step_stage3_noise() {  # and once more with context noise: other batches, 10% of the video inputs replaced
  $PY -m jobs.train --config configs/cpu/stage3_noise.yaml --shards "$SHARDS" --out "$R/stage3_noise" \
    train.init_from="$R/stage3_more" "${SET[@]}"
}
step_stage3_noise_more() {  # and 400 steps more of it: other batches
  $PY -m jobs.train --config configs/cpu/stage3_noise_more.yaml --shards "$SHARDS" --out "$R/stage3_noise_more" \
    train.init_from="$R/stage3_noise" "${SET[@]}"
}

for s in $STEPS; do
  if [ -e "$R/$s.done" ]; then echo "recipe: $s done before ($R/$s.done), skipped"; continue; fi
  declare -F "step_$s" > /dev/null || { echo "recipe: unknown step '$s' (see the usage line)" >&2; exit 2; }
  echo "recipe: $s started $(date -u +%FT%TZ)"
  start=$(date +%s)
  "step_$s"
  echo "{\"step\": \"$s\", \"wall_s\": $(( $(date +%s) - start ))}" > "$R/$s.done"
  echo "recipe: $s done in $(( $(date +%s) - start )) s"
done
