#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, CuTe DSL kernels) and cuDNN's Python frontend (fp8 attention) for
# the GPU machines, which have no package registry. The CUDA-13 CuTe compiler library alone is 92 MB
# as a wheel, more than one device call may carry (64 MiB with the repo), so the wheels travel in
# parts that a warm machine stages in /tmp (any call may stage any part; install once all are there).
#
#   here:    bash benchmarks/fa4_carry.sh prepare            # -> .fa4a/ (~32 MB), .fa4b/ (~50 MB),
#                                                            #    .fa4c/ (~12 MB, nvidia-cudnn-frontend)
#   device:  bash benchmarks/fa4_carry.sh stage .fa4a        # call 1 (carry .fa4a)
#            bash benchmarks/fa4_carry.sh stage .fa4b        # call 2 on the same warm machine (carry .fa4b)
#            bash benchmarks/fa4_carry.sh stage .fa4c        # with either (optional: fp8 attention)
#            bash benchmarks/fa4_carry.sh install /tmp/site  # once both are staged; then
#            export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD
#
# The product itself needs none of this: kernels/attention.py uses FA4 when `flash_attn.cute`
# imports (pip install flash-attn-4 on a machine with a registry), else cuDNN SDPA.
set -euo pipefail
STAGE=/tmp/fa4_stage
CUT=4.8.1
IR=nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
RT=nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so

case "${1:-}" in
prepare)
  tmp=$(mktemp -d)
  dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
           --platform manylinux2014_x86_64 -d "$tmp" "$@"; }
  dl flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==$CUT nvidia-cutlass-dsl-libs-base==$CUT \
     nvidia-cutlass-dsl-libs-core==$CUT nvidia-cutlass-dsl-libs-cu13==$CUT quack-kernels==0.6.5 \
     apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 einops==0.8.1 cuda-bindings==13.5.0 \
     cuda-pathfinder==1.9.1
  rm -rf .fa4a .fa4b .fa4c && mkdir -p .fa4a .fa4b .fa4c
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d .fa4c nvidia-cudnn-frontend==1.32.0
  for w in "$tmp"/*.whl; do case "$w" in *libs_cu13*) ;; *) cp "$w" .fa4a/ ;; esac; done
  mkdir "$tmp/cu13" && (cd "$tmp/cu13" && python3 -m zipfile -e "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl .)
  xz -9 -T2 -c "$tmp/cu13/$RT" > .fa4a/rt.xz
  xz -9 -T2 -c "$tmp/cu13/$IR" > .fa4b/ir.xz
  (cd "$tmp/cu13" && rm "$RT" "$IR" && tar -cf - .) > .fa4a/cu13_rest.tar
  rm -rf "$tmp"
  du -sh .fa4a .fa4b .fa4c ;;
stage)
  mkdir -p "$STAGE" && cp "$2"/* "$STAGE"/ && ls "$STAGE" ;;
install)
  site=$2
  for f in rt.xz ir.xz cu13_rest.tar; do
    [ -f "$STAGE/$f" ] || { echo "fa4: $STAGE/$f not staged (machine went cold between calls?)"; exit 3; }
  done
  mkdir -p "$site"
  for w in "$STAGE"/*.whl; do python3 -m zipfile -e "$w" "$site"; done
  tar -xf "$STAGE/cu13_rest.tar" -C "$site"
  python3 - "$STAGE" "$site" "$RT" "$IR" <<'PY'
import lzma, os, shutil, sys
stage, site, rt, ir = sys.argv[1:]
for name, rel in (("rt.xz", rt), ("ir.xz", ir)):
    dst = os.path.join(site, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with lzma.open(os.path.join(stage, name)) as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 24)
    os.chmod(dst, 0o755)
PY
  echo "fa4: installed into $site" ;;
*)
  echo "usage: $0 prepare | stage DIR | install SITE" >&2; exit 2 ;;
esac
