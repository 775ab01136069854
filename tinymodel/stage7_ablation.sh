#!/usr/bin/env bash
# Which part of stage 7's seamless-chain recipe helps and which hurts, in one GPU call.
#
# Stage 7 as written (train_release.sh: renderer-made hand-offs + latent noise 0.3 + colour jitter
# 0.04 + boundary weight 3) made 60-s chains worse than the shipped stage 6 on an H100: boundary
# jump 1.66x (max 2.25x) vs 1.25x (1.69x) of the within-clip p95, colour drift at the last clip 13.8
# vs 10.7 (benchmarks/results/tiny_model_training.md). This fine-tunes stage 6 five ways at once on
# one GPU (the tiny DiT leaves an H100 mostly idle, so the runs share it), each changing one thing
# from the same base, then evaluates all five over 60 s and prints one table (OUT keeps table.md and
# ablation.tar.gz with the JSONs, boundary strips and logs):
#
#   control   ground-truth hand-offs (is fine-tuning on new characters alone harmful?)
#   renderer  hand-offs made as the renderer makes them, nothing else
#   boundary  renderer + the first 2 latents after the motion frames weighted 3x
#   noise     renderer + latent noise 0.3 on the previous clip before it is decoded
#   colour    renderer + colour jitter 0.04 of the handed frames
#
#   bash tinymodel/stage7_ablation.sh WORK OUT      # WORK/3 = the VAE stage, WORK/6 = stage 6's DiT
#
# On the GPU machine (carry .gpur and .cache/speech_corpus.npz; ~9 minutes on an H100):
#   bash benchmarks/gpu_carry.sh install-render /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#   W=/tmp/w; mkdir -p $W/3 $W/6/ckpt && cp tinymodel/tiny-s2v/Wan2.1_VAE.pth $W/3/ \
#     && cp tinymodel/tiny-s2v/diffusion_pytorch_model.safetensors $W/6/ckpt/
#   bash tinymodel/stage7_ablation.sh $W $OUT
# CPU check of the script (a full-batch run takes ~18 GB of RAM on the CPU): MINUTES=0.2 PARALLEL=5
#   TRAIN_ARGS="--smoke --batch 2 --device cpu" EVAL_ARGS="--samples 1 --seconds 6 --steps 1" DEVICE=cpu
set -euo pipefail
work=${1:?usage: stage7_ablation.sh WORK OUT}
out=${2:?usage: stage7_ablation.sh WORK OUT}
py=${PYTHON:-python3}
corpus=${CORPUS:-.cache/speech_corpus.npz}
device=${DEVICE:-cuda}
mkdir -p "$out"
variants=(control renderer boundary noise colour)
flags() {
  case $1 in
    control) echo "--handoff ground-truth" ;;
    renderer) echo "--handoff renderer" ;;
    boundary) echo "--handoff renderer --boundary-weight 3 --boundary-latents 2" ;;
    noise) echo "--handoff renderer --handoff-latent-noise 0.3" ;;
    colour) echo "--handoff renderer --handoff-colour 0.04" ;;
  esac
}
# stage 7's settings apart from the hand-off options (train_release.sh)
common=(--init-vae "$work/3/Wan2.1_VAE.pth" --init-dit "$work/6/ckpt/diffusion_pytorch_model.safetensors"
        --corpus "$corpus" --seed 3 --vae-share 0 --data-share 0.3 --dit-share 0.66 --lr 1e-4 --first-clip-p 0.2
        --minutes "${MINUTES:-6}" --eval-samples 0 --ema 0.995 ${TRAIN_ARGS:-})
# PARALLEL runs at a time (default all five: the tiny DiT's training used ~1/5 of an H100's time; its
# memory there is not measured, so a run that fails is reported and the others still evaluated)
parallel=${PARALLEL:-5}
trained=() failed=()
for ((i = 0; i < ${#variants[@]}; i += parallel)); do
  wave=("${variants[@]:i:parallel}") pids=()
  for v in "${wave[@]}"; do
    # shellcheck disable=SC2046  # the variant's flags are words
    "$py" -m tinymodel.train --out "$work/abl-$v" "${common[@]}" $(flags "$v") > "$out/train-$v.log" 2>&1 &
    pids+=($!)
  done
  for j in "${!wave[@]}"; do
    if wait "${pids[$j]}"; then trained+=("${wave[$j]}"); else failed+=("${wave[$j]}"); fi
  done
done
for v in "${failed[@]}"; do echo "stage7_ablation: training '$v' failed:"; tail -n 5 "$out/train-$v.log"; done
pids=() evaluated=()
for v in stage6 "${trained[@]}"; do
  ckpt=$work/abl-$v/ckpt
  [ "$v" = stage6 ] && ckpt=tinymodel/tiny-s2v
  # shellcheck disable=SC2086
  "$py" -m tinymodel.chain_eval --device "$device" --ckpt "$ckpt" --corpus "$corpus" --out "$out/$v.json" \
    --strip "$out/$v.png" ${EVAL_ARGS:---samples 3 --seconds 60 --steps 8} > "$out/eval-$v.log" 2>&1 &
  pids+=($!) evaluated+=("$v")
done
jsons=()
for j in "${!evaluated[@]}"; do
  if wait "${pids[$j]}"; then jsons+=("$out/${evaluated[$j]}.json")
  else echo "stage7_ablation: evaluating '${evaluated[$j]}' failed:"; tail -n 5 "$out/eval-${evaluated[$j]}.log"; fi
done
[ ${#jsons[@]} -gt 0 ] || { echo "stage7_ablation: nothing to compare"; exit 1; }
"$py" -m tinymodel.chain_table "${jsons[@]}" | tee "$out/table.md"
# The device tool returns at most 8 files from a call: everything but the table in one archive.
(cd "$out" && tar -czf ablation.tar.gz --exclude=table.md --exclude=ablation.tar.gz ./*.json ./*.png ./*.log \
  && find . -maxdepth 1 -type f ! -name table.md ! -name ablation.tar.gz -delete) || true
[ ${#failed[@]} = 0 ] && [ ${#jsons[@]} = $((${#trained[@]} + 1)) ]
