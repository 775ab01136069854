#!/usr/bin/env bash
# The open GPU measurements as numbered device calls, so a session with a few scarce minutes on one
# warm machine issues short, checked commands back to back (the machine goes back ~30 s after a
# call ends; everything staged in /tmp goes with it). Run `bash benchmarks/carry_slim.sh on` here
# first (three wheel parts per call), `off` right after the last call. Each step prints what it ran.
#
#   step  carry                                             what                              ~min
#   1     .gpua .gpub .gpuin .gpur .fa4e                    stage; 14B checkpoint; --fast      6.5
#                                                           vs exact at 720p (bench_fast_speed)
#   2     .gpuc .gpud .gpue                                 stage; install; a real out-of-     3.5
#                                                           memory error through `s2v run`
#                                                           (720p fails under a 54 GiB cap,
#                                                           480p at 4 steps: cuDNN baseline)
#   3     .fa4a .fa4b                                       stage                              0.3
#   4     .fa4c .fa4d                                       stage; install FA4; `s2v run` of   3.5
#                                                           the 8 s 480p shot at 4 steps with
#                                                           FA4 (step 2's shot, same steps),
#                                                           dashboard metrics scraped
#   ablation  .gpur .cache/speech_corpus.npz (carry_slim OFF: needs the tiny weights)         9
#             tinymodel/stage7_ablation.sh
#
#   device:  bash benchmarks/gpu_session.sh 1        (with $OUT set by the device tool)
#   here:    DRY_RUN=1 bash benchmarks/gpu_session.sh 2    # print the commands only
#   SKIP_BENCH=1 with step 1: stage and write the checkpoint only (steps 2-4 need it; ~2 min)
set -euo pipefail
step=${1:?usage: gpu_session.sh 1|2|3|4|ablation}
out=${OUT:?OUT: the folder whose files come back}
ckpt=/tmp/s2v14b
run() { echo "+ $*"; [ -n "${DRY_RUN:-}" ] || "$@"; }
render_env() { export PYTHONPATH=/tmp/site_r:$PWD; }
full_env() { export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD PATH=/tmp/site/bin:$PATH; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
case "$step" in
1)
  run bash benchmarks/gpu_carry.sh stage .gpua
  run bash benchmarks/gpu_carry.sh stage .gpub
  run bash benchmarks/fa4_carry.sh stage .fa4e
  run mkdir -p /tmp/gpuin
  run cp -r .gpuin/. /tmp/gpuin/
  run bash benchmarks/gpu_carry.sh install-render /tmp/site_r
  render_env
  run python3 -m tinymodel.test_checkpoint "$ckpt" --device cuda
  [ -z "${SKIP_BENCH:-}" ] || { echo "SKIP_BENCH set: staged and checkpoint written, no benchmark"; exit 0; }
  # On an H100 the exact 720p baseline is on record (fast_mode_speed_720_h100_oom.json), so only
  # --fast runs; another card measures both (PHASES overrides).
  default=exact,fast
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q H100 && default=fast
  phases=${PHASES:-$default}
  run timeout 420 python3 benchmarks/bench_fast_speed.py --ckpt "$ckpt" --sizes 1280x720 --repeats 1 \
    --phases "$phases" --out "$out/fast_speed_720.json" ;;
2)
  for p in .gpuc .gpud .gpue; do run bash benchmarks/gpu_carry.sh stage $p; done
  run bash benchmarks/gpu_carry.sh install /tmp/site
  full_env
  run python3 benchmarks/gpu_run.py run --ckpt "$ckpt" --inputs /tmp/gpuin --work /tmp/oom --out "$out/oom" \
    --only s720 s08 --steps 4 --cap-gib 54 --stop-after 300 ;;
3)
  for p in .fa4a .fa4b; do run bash benchmarks/fa4_carry.sh stage $p; done ;;
4)
  for p in .fa4c .fa4d; do run bash benchmarks/fa4_carry.sh stage $p; done
  run bash benchmarks/fa4_carry.sh install /tmp/site
  full_env
  run python3 -c "import flash_attn.cute; print('FA4 importable')"
  run python3 benchmarks/gpu_run.py run --ckpt "$ckpt" --inputs /tmp/gpuin --work /tmp/fa4 --out "$out/fa4" \
    --only s08 --steps 4 --scrape-metrics 10 --stop-after 300 ;;
ablation)
  run bash benchmarks/gpu_carry.sh install-render /tmp/site_r
  render_env
  w=/tmp/w
  run mkdir -p $w/3 $w/6/ckpt
  run cp tinymodel/tiny-s2v/Wan2.1_VAE.pth $w/3/
  run cp tinymodel/tiny-s2v/diffusion_pytorch_model.safetensors $w/6/ckpt/
  run bash tinymodel/stage7_ablation.sh $w "$out" ;;
*)
  echo "usage: $0 1|2|3|4|ablation" >&2; exit 2 ;;
esac
