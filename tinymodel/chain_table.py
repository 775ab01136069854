"""One markdown table of several ``tinymodel.chain_eval`` results, a column per checkpoint.

    python -m tinymodel.chain_table before.json after.json [...]   # column names = file stems
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (row label, how to read it from a result's summary, the target the long-form issue set)
ROWS = (
    ("boundary jump / within-clip p95, mean", lambda s: s["boundary_mean_over_p95"], "<= 1.5"),
    ("boundary jump / within-clip p95, max", lambda s: s["boundary_max_over_p95"], ""),
    ("lip-sync over the chain, mean", lambda s: s["lipsync_mean"], ">= 0.9"),
    ("lip-sync, min", lambda s: s["lipsync_min"], ""),
    ("lip-sync, first 10 s", lambda s: s["lipsync_first_10s_mean"], ""),
    ("eyes kept, last clip (left / right)",
     lambda s: f"{s['features_kept_last_clip']['left_eye']:.2f} / {s['features_kept_last_clip']['right_eye']:.2f}",
     "kept"),
    ("mouth kept, worst clip", lambda s: s["features_kept_min_clip"]["mouth"], "kept"),
    ("colour drift (Lab), first / last clip",
     lambda s: f"{s['colour_drift_first_clip']:.1f} / {s['colour_drift_last_clip']:.1f}", "<= 3"),
    ("colour drift, max", lambda s: s["colour_drift_max"], ""),
)


def table(paths: list[Path]) -> str:
    results = []
    for p in paths:
        data = json.loads(p.read_text())
        if "summary" not in data:
            raise SystemExit(f"{p}: no 'summary' key; expected a JSON written by python -m tinymodel.chain_eval")
        results.append(data)
    lines = ["| metric | " + " | ".join(p.stem for p in paths) + " | target |",
             "|---|" + "---:|" * len(paths) + "---|"]
    for label, read, target in ROWS:
        cells = []
        for r in results:
            v = read(r["summary"])
            cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    first = results[0]
    lines.append("")
    lines.append(f"{first.get('samples')} held-out characters x {first.get('seconds')} s, {first.get('steps')} steps, "
                 f"guidance {first.get('guidance')}, device {first.get('device')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="chain_eval JSON files")
    print(table(ap.parse_args(argv).results))


if __name__ == "__main__":
    main()
