#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, CuTe DSL kernels) and cuDNN's Python frontend (fp8 attention) for
# the GPU machines, which have no package registry. The CUDA-13 CuTe compiler library alone is 92 MB
# as a wheel, and a device call carries 64 MiB including the ~41 MB repository (golden data and the
# tiny model in it), so everything travels as one tar cut into parts of ~21 MB that a warm machine
# stages in /tmp over back-to-back calls (any call may stage any part; install once all are there).
#
#   here:    bash benchmarks/fa4_carry.sh prepare            # -> .fa4a/ .fa4b/ ... (~21 MB each)
#   device:  bash benchmarks/fa4_carry.sh stage .fa4a        # one call per part, same warm machine
#            ...                                             # (each call may also run work)
#            bash benchmarks/fa4_carry.sh install /tmp/site  # once every part is staged; then
#            export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PWD
#
# With the product's wheels (benchmarks/gpu_carry.sh) install both into the same site folder.
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
  pay=$tmp/payload && mkdir -p "$pay"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d "$pay" nvidia-cudnn-frontend==1.32.0
  for w in "$tmp"/*.whl; do case "$w" in *libs_cu13*) ;; *) cp "$w" "$pay"/ ;; esac; done
  mkdir "$tmp/cu13" && (cd "$tmp/cu13" && python3 -m zipfile -e "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl .)
  xz -9 -T2 -c "$tmp/cu13/$RT" > "$pay/rt.xz"
  xz -9 -T2 -c "$tmp/cu13/$IR" > "$pay/ir.xz"
  (cd "$tmp/cu13" && rm "$RT" "$IR" && tar -cf - .) > "$pay/cu13_rest.tar"
  # one tar (its members are compressed already), cut into parts; the sha256 travels with each part
  (cd "$pay" && tar -cf "$tmp/fa4.tar" .) && (cd "$tmp" && sha256sum fa4.tar > fa4.sha256)
  rm -rf .fa4? && (cd "$tmp" && split -b 21M -d -a 1 fa4.tar fa4.tar.part)
  n=$(ls "$tmp"/fa4.tar.part* | wc -l) && i=0
  for part in "$tmp"/fa4.tar.part*; do
    d=.fa4$(printf "\\$(printf %o $((97 + i)))") && mkdir -p "$d" && mv "$part" "$d/" \
      && cp "$tmp/fa4.sha256" "$d/" && echo "$n" > "$d/parts" && i=$((i + 1))
  done
  rm -rf "$tmp"
  du -sh .fa4? ;;
stage)
  mkdir -p "$STAGE" && cp "$2"/* "$STAGE"/ && ls "$STAGE" ;;
install)
  site=$2
  n=$(cat "$STAGE/parts" 2>/dev/null || echo 0)
  for i in $(seq 0 $((n - 1))); do
    [ -f "$STAGE/fa4.tar.part$i" ] || { echo "fa4: part $i of $n not staged in $STAGE (machine went cold between calls?)"; exit 3; }
  done
  [ "$n" -gt 0 ] || { echo "fa4: nothing staged in $STAGE"; exit 3; }
  (cd "$STAGE" && cat $(for i in $(seq 0 $((n - 1))); do echo fa4.tar.part$i; done) > fa4.tar \
    && sha256sum -c fa4.sha256 && tar -xf fa4.tar && rm fa4.tar)
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
