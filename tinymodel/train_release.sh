#!/usr/bin/env bash
# The recipe that produced the shipped tiny model (tinymodel/tiny-s2v), stage by stage, on one GPU.
# The shipped model is stage 6's DiT. Stage 7 (seamless chains) was trained once and made 60-s chains
# worse (benchmarks/results/tiny_model_training.md), so `ship` copies stage 6 until a variant of
# tinymodel/stage7_ablation.sh beats it (SHIP_STAGE=7 ships stage 7).
#
#   bash tinymodel/train_release.sh WORK_DIR            # all seven stages (~57 GPU-minutes on an H100)
#   bash tinymodel/train_release.sh WORK_DIR 4          # one stage (each fits a 10-minute job), resumable
#   bash tinymodel/train_release.sh WORK_DIR ship       # copy the result into tinymodel/tiny-s2v
#
# Every stage reads the previous stage's output from WORK_DIR/<stage> and writes its own; a finished
# stage (its output file exists) is skipped. Needs the speech corpus (espeak-ng):
#   python -c "from tinymodel.speech import build_corpus; build_corpus('.cache/speech_corpus.npz', 400)"
# Why stages: the VAE and the DiT train in time budgets (--minutes) so that each stage fits the GPU
# machines' 10-minute calls; the DiT stages 5 and 6 continue from the previous weights on freshly
# generated characters (--seed), which is what lifted held-out lip-sync from 0.73 to 0.89.
# Wall-clock budgets make the step counts depend on the card; the numbers in
# benchmarks/results/tiny_model_training.md are from an H100.
set -euo pipefail
work=${1:?usage: train_release.sh WORK_DIR [STAGE|ship]}
only=${2:-all}
corpus=${CORPUS:-.cache/speech_corpus.npz}
train() { ${TRAIN_CMD:-python -m tinymodel.train} "$@"; }  # TRAIN_CMD: tests

stage() {  # stage N: skipped when its output exists
  local n=$1 out=$work/$1 want=$2; shift 2
  if [ "$only" != all ] && [ "$only" != "$n" ]; then return; fi
  if [ -e "$out/$want" ]; then echo "stage $n: done ($out/$want)"; return; fi
  echo "stage $n: $*"
  train --out "$out" "$@"
}

vae=Wan2.1_VAE.pth
dit=ckpt/diffusion_pytorch_model.safetensors
# 1-3: the chunk-local VAE (whole 128-px frames, 48 x 9-frame snippets per step) -> 23.2 dB on 161 frames
stage 1 $vae --vae-only --minutes 8
stage 2 $vae --vae-only --init-vae "$work/1/$vae" --vae-finetune --vae-lr 1e-3 --minutes 2.2
stage 3 $vae --vae-only --init-vae "$work/2/$vae" --vae-finetune --vae-lr 1e-3 --minutes 8.4
# 4-6: the DiT from scratch on that (frozen) VAE, then twice more on new characters at lower rates
stage 4 $dit --init-vae "$work/3/$vae" --corpus "$corpus" --vae-share 0 --data-share 0.12 --dit-share 0.85 \
  --minutes 7.2 --eval-samples 3
stage 5 $dit --init-vae "$work/3/$vae" --init-dit "$work/4/$dit" --corpus "$corpus" --seed 1 --vae-share 0 \
  --data-share 0.28 --dit-share 0.70 --lr 2e-4 --minutes 8.3 --eval-samples 3
stage 6 $dit --init-vae "$work/3/$vae" --init-dit "$work/5/$dit" --corpus "$corpus" --seed 2 --vae-share 0 \
  --data-share 0.25 --dit-share 0.73 --lr 1.5e-4 --minutes 8.3 --eval-samples 3
# 7: seamless chains - stage 6's DiT fine-tuned on windows whose motion latents are made as the renderer
# hands a clip on (decoded, perturbed like a sampler's output and a drifting colour, re-encoded; see
# tinymodel/windows.py) with the first 2 latents after the motion frames weighted up; a short EMA so that
# the exported weights are the fine-tuned ones rather than a quarter stage 6
stage 7 $dit --init-vae "$work/3/$vae" --init-dit "$work/6/$dit" --corpus "$corpus" --seed 3 --vae-share 0 \
  --data-share 0.3 --dit-share 0.66 --lr 1e-4 --first-clip-p 0.2 --minutes 6 --eval-samples 0 \
  --handoff renderer --handoff-latent-noise 0.3 --handoff-colour 0.04 --boundary-weight 3 --boundary-latents 2 --ema 0.995

if [ "$only" = ship ]; then
  dst=${SHIP_DIR:-$(dirname "$0")/tiny-s2v}
  last=${SHIP_STAGE:-6}  # the DiT stage to ship (stage 7 lost to stage 6 on 60-s chains)
  mkdir -p "$dst"
  cp "$work/$last/ckpt/config.json" "$work/$last/$dit" "$dst/"
  cp "$work/3/$vae" "$dst/$vae"
  echo "shipped into $dst; run: python -m pytest tests/tinymodel/test_shipped_model.py"
fi
