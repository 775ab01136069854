#!/usr/bin/env bash
# Fewer device calls for the carried wheels: a device call carries the repository's tracked files
# plus the `carry` paths, 64 MiB in all, and ~38 of the repository's ~41 MB are data the GPU work
# never reads (the golden test data, the tiny model's weights, result pictures). `on` makes them
# untracked and ignored in this clone for a while, so they stay here and a call carries ~61 MiB of
# parts: three ~20 MB parts per call instead of one (.gpua-.gpue and .fa4a-.fa4e in 4 calls, not
# 10). `off` puts the index and the ignore list back. The files themselves are never touched.
#
#   bash benchmarks/carry_slim.sh on     # then the device calls (carry e.g. [".gpuc", ".gpud", ".gpue"])
#   bash benchmarks/carry_slim.sh off    # at once afterwards: nothing may be committed in between
#   bash benchmarks/carry_slim.sh status
#
# Not for GPU work that needs the tiny model (tinymodel/stage7_ablation.sh) or the golden data (the
# GPU tests under tests/kernels use neither).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
git_dir=$(git rev-parse --git-dir)
list=$git_dir/carry_slim.list
exclude=$git_dir/info/exclude
mark="# carry_slim.sh: remove with 'bash benchmarks/carry_slim.sh off'"
case "${1:-}" in
on)
  [ ! -f "$list" ] || { echo "carry_slim: already on (bash benchmarks/carry_slim.sh off first)"; exit 2; }
  git diff --cached --quiet || { echo "carry_slim: the index has staged changes; commit or unstage them first"; exit 2; }
  git ls-files -- tests/data 'benchmarks/results/*.png' 'benchmarks/results/*.jpg' \
    'tinymodel/tiny-s2v/*.pth' 'tinymodel/tiny-s2v/*.safetensors' > "$list"
  [ -s "$list" ] || { rm -f "$list"; echo "carry_slim: nothing to leave out"; exit 2; }
  mkdir -p "$(dirname "$exclude")"
  { echo "$mark"; sed 's|^|/|' "$list"; echo "$mark"; } >> "$exclude"
  tr '\n' '\0' < "$list" | xargs -0 git rm -q --cached --
  echo "carry_slim: $(wc -l < "$list") files left out of device calls; tracked now: $(git ls-files -z | xargs -0 cat | wc -c) bytes"
  ;;
off)
  [ -f "$list" ] || { echo "carry_slim: not on"; exit 0; }
  # drop the block between the two marks, then restore the index entries from HEAD
  awk -v m="$mark" '$0 == m { skip = !skip; next } !skip' "$exclude" > "$exclude.tmp" && mv "$exclude.tmp" "$exclude"
  tr '\n' '\0' < "$list" | xargs -0 git reset -q HEAD --
  rm -f "$list"
  git diff --cached --quiet || { echo "carry_slim: the index still differs from HEAD; check git status"; exit 1; }
  echo "carry_slim: off; every file tracked again"
  ;;
status)
  if [ -f "$list" ]; then echo "carry_slim: on ($(wc -l < "$list") files left out)"; else echo "carry_slim: off"; fi
  ;;
*)
  echo "usage: $0 on | off | status" >&2; exit 2 ;;
esac
