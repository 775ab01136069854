#!/usr/bin/env bash
# What the product needs on the GPU machines (no package registry there) that their image lacks:
# ray[default] 2.60.0, av 18.1.0, omegaconf 2.4.0, ftfy, yunchang and their dependencies, 39 wheels
# of 132 MB (ray alone 79 MB, av 36 MB), more than one device call may carry (64 MiB with the
# ~39 MB repo, golden data included). `prepare` installs them here into one cp312 manylinux x86_64
# site tree (369 MB), packs it as tar.xz (100 MB) and splits that into 5 parts of ~20 MB; a warm
# machine stages the parts in /tmp over 5 back-to-back calls (it goes back after ~30 s idle: the
# staged parts go with it). `resplit` re-cuts existing parts into 5 (no download).
# pyarrow is NOT carried: the image has pyarrow 25.0.1 (pyproject asks >=15, ray[data] >=17).
# The image's aiohttp 3.14.3 is shadowed by 3.14.5 (ray[default] asks >=3.14.4). torch,
# transformers, numpy, safetensors, tokenizers, pillow, tqdm, einops come from the image.
#
#   here:    bash benchmarks/gpu_carry.sh prepare        # -> .gpua/ ... .gpue/ (~20 MB each),
#                                                        #    .gpur/ (1 MB: omegaconf, ftfy, wcwidth)
#            (xz -9e of 369 MB: ~7 min on 2 cores)
#   device:  bash benchmarks/gpu_carry.sh stage .gpua    # call 1 (carry .gpua)
#            bash benchmarks/gpu_carry.sh stage .gpub    # calls 2-4, same warm machine (carry .gpub,
#            ...                                         #   .gpuc, .gpud)
#            bash benchmarks/gpu_carry.sh stage .gpue && bash benchmarks/gpu_carry.sh install /tmp/site \
#              && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH \
#              && bash benchmarks/gpu_carry.sh check     # call 5 (carry .gpue): ray.init + a task
#   14B random-weight checkpoint (46 GB, tinymodel/test_checkpoint.py) and the product's loaders:
#            python3 -m tinymodel.test_checkpoint /tmp/s2v14b --device cuda \
#              && bash benchmarks/gpu_carry.sh load-check /tmp/s2v14b
#   render only (no ray/av: loading models, tinymodel.test_checkpoint), one call, carry .gpur:
#            bash benchmarks/gpu_carry.sh install-render /tmp/site && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
STAGE=/tmp/gpu_stage
PY=${PYTHON:-python3}  # prepare: a Python with pip (e.g. PYTHON=.venv/bin/python)
PARTS=(.gpua .gpub .gpuc .gpud .gpue)
N=${#PARTS[@]}
WHEELS=(
  ray==2.60.0 av==18.1.0 omegaconf==2.4.0 ftfy==6.3.1 wcwidth==0.9.5 yunchang==0.6.4
  aiohttp==3.14.5 aiohttp-cors==0.8.1 colorful==0.5.8 py-spy==0.4.3 smart-open==9.0.4
  opencensus==0.11.4 opencensus-context==0.1.3 google-api-core==2.44.0 google-auth==2.63.1
  googleapis-common-protos==1.76.0 proto-plus==1.29.0 pyasn1==0.6.5 pyasn1-modules==0.4.2
  cryptography==51.0.1 cffi==2.1.1 pycparser==3.12
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  virtualenv==21.15.14 distlib==0.4.4 platformdirs==4.14.9 python-discovery==1.9.9
)
RENDER_WHEELS=(omegaconf==2.4.0 ftfy==6.3.1 wcwidth==0.9.5)
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)

split_parts() {  # $1/site.tar.xz -> the N part folders
  (cd "$1" && split -n "$N" -d -a 1 site.tar.xz site.tar.xz.part && sha256sum site.tar.xz > site.sha256)
  rm -rf "${PARTS[@]}" && mkdir -p "${PARTS[@]}"
  for i in $(seq 0 $((N - 1))); do mv "$1/site.tar.xz.part$i" "${PARTS[$i]}/"; cp "$1/site.sha256" "${PARTS[$i]}/"; done
}

case "${1:-}" in
resplit)
  tmp=$(mktemp -d)
  for i in 0 1 2 3 4 5 6 7 8 9; do cat .gpu[a-q]/site.tar.xz.part$i 2>/dev/null || true; done > "$tmp/site.tar.xz"
  cp .gpua/site.sha256 "$tmp/" && (cd "$tmp" && sha256sum -c site.sha256) \
    || { echo "gpu_carry: the existing parts do not add up to site.tar.xz"; exit 3; }
  split_parts "$tmp" && rm -rf "$tmp" && du -sh "${PARTS[@]}" ;;
prepare)
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$tmp/whl" "${WHEELS[@]}"
  # Install here for the GPU machine's Python (pip keeps the binaries' exec bits; no .pyc).
  "$PY" -m pip install -q --no-deps --no-index --no-compile "${PLAT[@]}" --target "$tmp/site" "$tmp"/whl/*.whl
  tar -C "$tmp/site" -cf - . | xz -9e -T2 > "$tmp/site.tar.xz"
  split_parts "$tmp"
  rm -rf .gpur && mkdir -p .gpur
  for w in "${RENDER_WHEELS[@]}"; do cp "$tmp"/whl/"${w%%==*}"-"${w##*==}"-*.whl .gpur/; done
  rm -rf "$tmp"
  du -sh "${PARTS[@]}" .gpur ;;
stage)
  mkdir -p "$STAGE" && cp "$2"/* "$STAGE"/ && ls -la "$STAGE" ;;
install)
  site=$2
  for i in $(seq 0 $((N - 1))); do
    [ -f "$STAGE/site.tar.xz.part$i" ] || { echo "gpu_carry: part $i not staged in $STAGE (machine went cold between calls?)"; exit 3; }
  done
  (cd "$STAGE" && cat $(for i in $(seq 0 $((N - 1))); do echo site.tar.xz.part$i; done) > site.tar.xz \
    && sha256sum -c site.sha256)
  mkdir -p "$site" && xz -dc -T0 "$STAGE/site.tar.xz" | tar -xf - -C "$site"
  # Console scripts were written with this machine's interpreter in their first line.
  for f in "$site"/bin/*; do
    if head -c 2 "$f" | grep -q '#!'; then sed -i "1s|^#!.*python.*|#!$(command -v python3)|" "$f"; fi
  done
  echo "gpu_carry: installed into $site; export PYTHONPATH=$site:\$PWD PATH=$site/bin:\$PATH" ;;
install-render)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$2" .gpur/*.whl
  echo "gpu_carry: omegaconf/ftfy installed into $2" ;;
check)
  python3 - <<'PY'
import time
t0 = time.perf_counter()
import av, pyarrow, ray
print("ray", ray.__version__, "av", av.__version__, "pyarrow", pyarrow.__version__, flush=True)
ctx = ray.init(num_cpus=2, include_dashboard=True)
@ray.remote
def square(x):
    return x * x
assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
print("ray.init + 4 tasks ok in %.1f s, dashboard %s" % (time.perf_counter() - t0, ctx.dashboard_url), flush=True)
ray.shutdown()
PY
  ;;
load-check)
  # The product's loaders on a (random-weight) 14B folder: python -m tinymodel.test_checkpoint DIR
  python3 - "$2" <<'PY'
import sys, time, traceback
import numpy as np
import torch
from render.model.components import S2VModels
GiB, peaks = 2**30, []
def step(name, fn):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t0 = time.perf_counter()
    try:
        out = fn(); torch.cuda.synchronize()
    except Exception:
        print(f"{name}: FAILED after {time.perf_counter() - t0:.1f} s", flush=True); traceback.print_exc(); return None
    peaks.append(torch.cuda.max_memory_allocated())
    print(f"{name}: {time.perf_counter() - t0:.1f} s, max_memory_allocated {peaks[-1] / GiB:.2f} GiB, "
          f"allocated after {torch.cuda.memory_allocated() / GiB:.2f} GiB", flush=True)
    return out
m = step("S2VModels(dir, device='cuda')", lambda: S2VModels(sys.argv[1], device="cuda"))
dit = step("dit: load + optimize_dit", lambda: m.dit)
if dit is not None:
    p = next(dit.parameters())
    print(f"  DiT {sum(t.numel() for t in dit.parameters()) / 1e9:.3f} B params, {p.dtype}, {p.device}")
vae = step("vae: load", lambda: m.vae)
emb = step("embed_prompts(['a test']): umT5 load on GPU + encode + release", lambda: m.embed_prompts(["a test"]))
if emb is not None:
    print(f"  embedding {tuple(emb[0].shape)} {emb[0].dtype}, finite {bool(torch.isfinite(emb[0]).all())}")
step("wav2vec2: load (CPU, float32)", lambda: m.wav2vec)
f = step("audio_frames: 2 s of audio -> 32 frames (CPU)",
         lambda: m.audio_frames(np.random.default_rng(0).standard_normal(32000).astype(np.float32), 32, 16))
if f is not None:
    print(f"  features {tuple(f.shape)}, finite {bool(torch.isfinite(f).all())}")
print(f"max_memory_allocated over the steps: {max(peaks, default=0) / GiB:.2f} GiB", flush=True)
PY
  ;;
*)
  echo "usage: $0 prepare | stage DIR | install SITE | install-render SITE | check | load-check CKPT" >&2; exit 2 ;;
esac
