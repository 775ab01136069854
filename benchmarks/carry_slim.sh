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
common=$(git rev-parse --git-common-dir)
list=$(git rev-parse --git-path carry_slim.list)
head_file=$list.head
exclude=$common/info/exclude
hook=$(git rev-parse --git-path hooks)/pre-commit
mark="# carry_slim.sh: remove with 'bash benchmarks/carry_slim.sh off'"
case "${1:-}" in
on)
  [ ! -f "$list" ] || { echo "carry_slim: already on (bash benchmarks/carry_slim.sh off first)"; exit 2; }
  git diff --cached --quiet || { echo "carry_slim: the index has staged changes; commit or unstage them first"; exit 2; }
  [ ! -e "$hook" ] || { echo "carry_slim: $hook exists; this script guards commits with its own pre-commit hook"; exit 2; }
  git ls-files -z -- tests/data 'benchmarks/results/*.png' 'benchmarks/results/*.jpg' \
    'tinymodel/tiny-s2v/*.pth' 'tinymodel/tiny-s2v/*.safetensors' > "$list"
  [ -s "$list" ] || { rm -f "$list"; echo "carry_slim: nothing to leave out"; exit 2; }
  git rev-parse HEAD > "$head_file"
  # While on, the index holds the files' removal: a commit would delete them from the repository.
  mkdir -p "$(dirname "$hook")"
  printf '#!/bin/sh\necho "carry_slim.sh is on: run bash benchmarks/carry_slim.sh off before committing" >&2\nexit 1\n' > "$hook"
  chmod +x "$hook"
  mkdir -p "$(dirname "$exclude")"
  { echo "$mark"; tr '\0' '\n' < "$list" | sed 's|^|/|'; echo "$mark"; } >> "$exclude"
  xargs -0 git rm -q --cached -- < "$list"
  echo "carry_slim: $(tr -cd '\0' < "$list" | wc -c) files left out of device calls; tracked now: $(git ls-files -z | xargs -0 cat | wc -c) bytes"
  ;;
off)
  [ -f "$list" ] || { echo "carry_slim: not on"; exit 0; }
  # drop the block between the two marks, then the index entries as they were when it went on
  awk -v m="$mark" '$0 == m { skip = !skip; next } !skip' "$exclude" > "$exclude.tmp" && mv "$exclude.tmp" "$exclude"
  xargs -0 git reset -q "$(cat "$head_file")" -- < "$list"
  missing=$(xargs -0 git ls-files --error-unmatch -- < "$list" > /dev/null 2>&1 || echo yes)
  rm -f "$hook"
  [ -z "$missing" ] || { echo "carry_slim: some files are not tracked again (was HEAD moved while on?); check git status"; exit 1; }
  rm -f "$list" "$head_file"
  git diff --cached --quiet || { echo "carry_slim: the index still differs from HEAD; check git status"; exit 1; }
  echo "carry_slim: off; every file tracked again"
  ;;
status)
  if [ -f "$list" ]; then echo "carry_slim: on ($(tr -cd '\0' < "$list" | wc -c) files left out)"; else echo "carry_slim: off"; fi
  ;;
*)
  echo "usage: $0 on | off | status" >&2; exit 2 ;;
esac
