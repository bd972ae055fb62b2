#!/bin/bash
# The multi-seed runs of docs/results.md ("Real images: the Hangul set" and "Staleness"), `JOBS` at
# a time (default 2), each on one thread, niced. Usage, from the repository root with build/dev's
# `train` built:
#   examples/train/sweeps.sh table [SEEDS...]      Hangul set: protomem (gradient / detached), full
#                                                  softmax (grouped / uniform), Partial FC 10%, mining
#   examples/train/sweeps.sh staleness [SEEDS...]  Hangul set: memory size x aging policy
#   examples/train/sweeps.sh ablation [SEEDS...]   Hangul set: AgeDecay half-lives 4, 8, 32 at M = 512,
#                                                  and mining with AgeDecay(16) (HALF_LIVES="":
#                                                  the mining runs only)
#   examples/train/sweeps.sh synthetic [SEEDS...]  the staleness sweep on the synthetic set, 10^5 ids
# SEEDS default to 1 2 3. Runs whose results.csv exists are skipped, so an interrupted sweep
# resumes. Outputs go to $OUT (default docs/results/hangul, or docs/results/1e5-staleness for
# synthetic) / <run>-s<seed>/, with the console output in train.log.
# Aging: these runs were measured when protomem's default was NoAging; train's default is now
# protomem's default_aging() = AgeDecay(8), so the runs without an aging policy say --no-aging.
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:?table or staleness}; shift
seeds=${*:-1 2 3}
data=${DATA:-data/hangul-2500}
if [ "$what" = synthetic ]; then out=${OUT:-docs/results/1e5-staleness}; else out=${OUT:-docs/results/hangul}; fi
jobs=${JOBS:-2}
train=${TRAIN:-build/dev/examples/train}
if [ "$what" != synthetic ] && [ ! -f "$data/train.rec" ]; then
  # 2,500 syllables (2,000 training, 500 held out) drawn by 20 distinct faces: ~18 images each.
  nice -n 19 scripts/make-hangul-set --out "$data" --identities 2500 --max-faces 20 --seed 1
fi
# The protocol: a width-16 IResNet on 32x32 glyphs, D = 64, batches of 16 identities x 4 images,
# CosFace s = 32 m = 0.3, 1,200 steps (2.1 epochs of the 36,858 training images), 300 held-out
# identities x 4 images for verification, 2,000 further held-out images as distractors.
common="--data $data/train.rec --encoder cnn --width 16 --depth 1 --dim 64 --batch 64 --exemplars 4
  --steps 1200 --eval-every 200 --eval-identities 300 --eval-images 4 --distractors 2000
  --margin cosface --scale 32 --m 0.3 --threads 1 --loader-threads 1 --no-plot --no-progress"
if [ "$what" = synthetic ]; then
  # The 1e5 run's setup (docs/results.md "Setup"): MLP on synthetic identities, 300 steps of 32
  # identities x 4 images; only protomem, one thread.
  common="--identities 100000 --steps 300 --batch 128 --eval-every 100 --threads 1 --no-plot --no-progress"
fi
jobs_file=$(mktemp)
for s in $seeds; do
  case $what in
    table)
      t="--seed $s --capacity 512 --no-aging"
      echo "baselines-s$s $t --methods protomem-grouped,full-grouped,full-instance,pfc-instance" \
        "--sample-rate 0.1" >>"$jobs_file"
      echo "detached-s$s $t --methods protomem-grouped --generator detached" >>"$jobs_file"
      echo "mining-s$s $t --mining --methods protomem" >>"$jobs_file" ;;
    ablation)
      echo "mining-half16-s$s --seed $s --capacity 512 --mining --methods protomem --age-half-life 16" >>"$jobs_file"
      for h in ${HALF_LIVES-4 8 32}; do
        echo "m512-half$h-s$s --seed $s --capacity 512 --methods protomem-grouped --age-half-life $h" >>"$jobs_file"
      done ;;
    staleness|synthetic)
      # POLICIES: name=flags pairs, e.g. "none=--no-aging half16=--age-half-life,16"
      default_policies="none=--no-aging maxage32=--max-age,32,--age-half-life,inf"
      default_policies+=" half16=--age-half-life,16"
      sizes="256 512 1024 2048"; [ "$what" = synthetic ] && sizes="1024 2048 4096 8192"
      for m in ${SIZES:-$sizes}; do
        for p in ${POLICIES:-$default_policies}; do
          # (no trailing blank: xargs -L would join the next line)
          echo "m$m-${p%%=*}-s$s --seed $s --capacity $m --methods protomem-grouped ${p#*=}" |
            tr ',' ' ' | sed 's/ *$//' >>"$jobs_file"
        done
      done ;;
    *) echo "unknown: $what" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
run() {
  name=$1; shift
  [ -f "$out/$name/results.csv" ] && return 0
  nice -n 19 $train $common "$@" --out "$out/$name" >"$out/$name.log" 2>&1 && mv "$out/$name.log" "$out/$name/train.log"
}
export -f run; export out train common
xargs -P "$jobs" -L 1 bash -c 'run "$@"' _ <"$jobs_file"
rm -f "$jobs_file"
