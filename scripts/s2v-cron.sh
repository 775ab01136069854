#!/usr/bin/env bash
# Cron wrapper for `s2v run`: one line per start and per exit in RUN_DIR/logs/cron.log, the full
# output of the run appended to the same file, and the run's exit code passed through.
#
#   s2v-cron.sh MANIFEST RUN_DIR [more `s2v run` options, e.g. --ckpt DIR --groups 4 --group-size 2]
#
# crontab (every 15 minutes; a start while the previous run still holds the lease exits 4 at once).
# The manifest may grow between firings: each firing renders the appended rows and the rows whose
# inputs or settings changed, and leaves the published ones alone (docs/cluster.md, "Shot keys"):
#   */15 * * * * /opt/s2v-render/scripts/s2v-cron.sh /data/shots/manifest.parquet /data/runs/nightly --ckpt /models/Wan2.2-S2V-14B --address auto
#
# Environment: S2V_BIN (the s2v command; default: .venv/bin/s2v of this checkout).
# Exit codes (docs/cluster.md): 0 all done, 1 internal error, 2 invalid manifest/usage, 3 unreadable
# manifest, 4 another run holds the lease, 5 changes refused, 6 finished with failed or unrendered
# shots, 7 the environment (run directory full/read-only/forbidden, or no Ray cluster at --address),
# 130 interrupted, 128+N killed by signal N. cron mails what a job prints, so this script prints only
# for the codes that need a person (not 0, not 4), and not again for a firing that had nothing to do
# and ended as the previous firing did (the same failed shots all night are one mail, not one per firing).
set -u

if [ "$#" -lt 2 ]; then
    echo "usage: $0 MANIFEST RUN_DIR [s2v run options...]" >&2
    exit 2
fi
manifest=$1
run_dir=$2
shift 2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
s2v="${S2V_BIN:-$repo/.venv/bin/s2v}"
mkdir -p "$run_dir/logs" || exit 2
log="$run_dir/logs/cron.log"

echo "$(date '+%Y-%m-%dT%H:%M:%S%z') start pid $$: $manifest" >>"$log"
out=$(mktemp "${TMPDIR:-/tmp}/s2v-cron.XXXXXX") || exit 2
trap 'rm -f "$out"' EXIT
# Arguments are passed as an argument vector ("$@"), never through eval or a shell string.
"$s2v" run "$manifest" --run-dir "$run_dir" "$@" >"$out" 2>&1
code=$?
cat "$out" >>"$log"

case "$code" in
    0) what="all shots done" ;;
    2) what="invalid manifest or usage" ;;
    3) what="manifest unreadable" ;;
    4) what="another run holds the lease; nothing rendered" ;;
    5) what="a published shot changed and changes were refused" ;;
    6) what="finished with failed or unrendered shots (s2v status --run-dir $run_dir)" ;;
    7) what="the environment: run directory full, read-only or forbidden, or no Ray cluster at --address" ;;
    130) what="interrupted; the next start resumes" ;;
    1) what="internal error" ;;
    *) if [ "$code" -gt 128 ]; then what="killed by signal $((code - 128)); the next start resumes"
       else what="unexpected exit code"; fi ;;
esac
echo "$(date '+%Y-%m-%dT%H:%M:%S%z') exit $code: $what" >>"$log"
# "nothing to do: 3 done, 1 failed of 4 shots ..." repeated by every firing of an unchanged night
outcome="$code $(grep -h 'nothing to do:' "$out" | tail -n 1)"
last="$run_dir/logs/cron.last"
repeated=0
if grep -q "nothing to do:" "$out" && [ -f "$last" ] && [ "$(cat "$last")" = "$outcome" ]; then
    repeated=1
fi
printf '%s' "$outcome" >"$last"
case "$code" in
    0|4) ;;
    *) [ "$repeated" = 1 ] || echo "s2v-cron: $run_dir: exit $code ($what); see $log" >&2 ;;
esac
exit "$code"
