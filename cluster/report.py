"""``RUN_DIR/index.html``: a static page of a run, for a browser opening the file directly.

No server, no scripts, no external resources: inline CSS, links and images relative to the run
directory (outputs elsewhere get ``file://`` links). Written atomically by the driver with every
results.parquet write (``RunEngine._publish_state``) and by ``s2v status --html``. It shows the
counts, a row per shot (state, attempts, error, output, size, duration, QA: the quality curves'
numbers and flags with links to their plot and seam contact sheet when ``shots/<id>/qa.json`` is
the summary of ``cluster.results.record_shot_qa``, or the numbers of an ``s2v qa --json-out``
report placed there) and a contact sheet: the middle
frame of every published shot, decoded once into ``report/`` (named by the video's sha256, so a
re-rendered shot gets a new thumbnail and the old one is removed).
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.parquet as pq

from cluster.ledger import RunDir
from render.media.atomic import atomic_write, atomic_write_text, read_json

log = logging.getLogger(__name__)

REPORT_FILE = "index.html"
THUMB_DIR = "report"
THUMB_SIDE = 240  # longest side of a contact-sheet thumbnail, pixels
STATES = ("done", "failed", "running", "interrupted", "pending")
# Reloads the page while shots are still to be done (a meta refresh works from file://).
REFRESH_S = 30

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
.summary span{display:inline-block;padding:.2em .6em;margin-right:.4em;border-radius:4px;background:#eee}
.summary .done{background:#d7f5d7}.summary .failed{background:#f8d4d4}.summary .running{background:#fdf0c4}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;color:#555}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
table{border-collapse:collapse;width:100%;margin-top:.5em}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.failed td.error{color:#a00;white-space:pre-wrap;max-width:40em}
.sheet{display:flex;flex-wrap:wrap;gap:.8em}
.sheet figure{margin:0;width:240px}.sheet img{max-width:240px;display:block;background:#000}
.sheet figcaption{font-size:.85em;color:#555;word-break:break-all}
"""


def _thumb_name(shot_id: str, sha256: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", shot_id)[:80]
    return f"{readable}-{hashlib.sha256(shot_id.encode()).hexdigest()[:6]}-{sha256[:12]}.jpg"


def _middle_frame(video: Path):
    """The frame at the middle of ``video`` as a PIL image (seek to the key frame before it, then
    decode forward), or None when the file has no video frames."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        target = (duration or 0.0) / 2
        if target > 0 and stream.time_base:
            container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.pts is None or float(frame.pts * stream.time_base) >= target:
                break
        return last.to_image() if last is not None else None


def make_thumbnail(video: Path, dest: Path) -> bool:
    """Write the middle frame of ``video`` as a JPEG at ``dest`` (atomically); False if none."""
    image = _middle_frame(video)
    if image is None:
        return False
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, lambda tmp: image.convert("RGB").save(tmp, format="JPEG", quality=85), durable=False)
    return True


def _href(target: str | Path, base: Path) -> str:
    """A link from ``base``'s folder: relative when the target lies inside it, else file://."""
    target = Path(target).absolute()
    try:
        rel = target.relative_to(base)
    except ValueError:
        return target.as_uri()
    return quote(rel.as_posix())


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _qa_numbers(qa: dict[str, Any] | None) -> str:
    if not isinstance(qa, dict):
        return ""
    if "summary" in qa or "error" in qa:  # cluster.results.record_shot_qa
        if "error" in qa:
            return f"QA not measured: {qa['error']}"
        s = qa["summary"]
        parts = [f"{label} {s[key]:{spec}}" for key, label, spec in (
            ("worst_seam_ratio", "worst seam", ".2f"), ("max_colour_drift", "max colour drift dE76", ".1f"),
            ("min_face_similarity", "min face similarity", ".2f"), ("lipsync", "lip-sync corr", ".3f"))
            if s.get(key) is not None]
        if parts and s.get("worst_seam_ratio") is not None:
            parts[0] += "x p95"
        return "; ".join(parts + [f"FLAGGED {f}" for f in s.get("flags") or []])
    parts = []
    inside = qa.get("inside") or {}
    if "p95" in inside:
        parts.append(f"inside p95 {inside['p95']:.3f}")
    ratios = [j.get("ratio_p95") for j in qa.get("joins") or [] if j.get("ratio_p95") is not None]
    if ratios:
        parts.append(f"worst join {max(ratios):.2f}x p95")
    if isinstance(qa.get("lipsync"), dict) and "corr" in qa["lipsync"]:
        parts.append(f"lip-sync corr {qa['lipsync']['corr']:.3f}")
    return "; ".join(parts)


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _elapsed(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _thumbnails(run: RunDir, rows: list[dict[str, Any]]) -> dict[str, str]:
    """shot_id -> thumbnail path relative to the run directory, made for new published shots."""
    folder = run.path / THUMB_DIR
    made: dict[str, str] = {}
    for row in rows:
        if row["status"] != "done" or not row.get("output"):
            continue
        published = run.read_published(row["shot_id"]) or {}
        sha = published.get("sha256") or row.get("sha256") or ""
        dest = folder / _thumb_name(row["shot_id"], sha)
        if not dest.is_file():
            try:
                if not make_thumbnail(Path(row["output"]), dest):
                    continue
            except Exception as exc:  # a moved or damaged output must not stop the report
                log.warning("report: no thumbnail for shot %s (%s): %s", row["shot_id"], row["output"], exc)
                continue
        made[row["shot_id"]] = f"{THUMB_DIR}/{dest.name}"
    if folder.is_dir():  # thumbnails of re-rendered or removed shots
        keep = {Path(p).name for p in made.values()}
        for old in folder.glob("*.jpg"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
    return made


def _shot_row(run: RunDir, row: dict[str, Any], thumb: str | None) -> str:
    e = html.escape
    sid = row["shot_id"]
    output = row.get("output") or ""
    published = run.read_published(sid) if row["status"] == "done" else None
    size = (published or {}).get("bytes")
    if size is None and row["status"] == "done" and output and os.path.isfile(output):
        size = os.path.getsize(output)
    link = (f'<a class="output" href="{e(_href(output, run.path))}">{e(Path(output).name)}</a>'
            if row["status"] == "done" and output else e(output))
    duration = f"{row['duration_s']:.2f} s" if row.get("duration_s") is not None else ""
    qa_cell = _qa_cell(run, sid, published)
    return (f'<tr class="{e(row["status"])}" data-shot="{e(sid)}"><td>{e(sid)}</td>'
            f'<td class="state">{e(row["status"])}</td><td class="num">{row.get("attempts") or 0}</td>'
            f'<td class="error">{e(row.get("error") or "")}</td><td>{link}</td>'
            f'<td class="num">{_size(size)}</td><td class="num">{duration}</td><td class="qa">{qa_cell}</td>'
            f'<td>{"yes" if thumb else ""}</td></tr>')


def _qa_cell(run: RunDir, sid: str, published: dict[str, Any] | None) -> str:
    """The QA column: numbers and flags, and links to the shot's curves plot and seam sheet."""
    path = run.shot_dir(sid) / "qa.json"
    try:
        qa = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return ""
    if not isinstance(qa, dict):
        return ""
    if "sha256" in qa and (not published or qa["sha256"] != published.get("sha256")):
        return ""  # measured on an earlier render of the shot
    cell = html.escape(_qa_numbers(qa))
    links = [f'<a href="{html.escape(_href(run.shot_dir(sid) / Path(qa[key]).name, run.path))}">{label}</a>'
             for key, label in (("plot", "curves"), ("sheet", "seams"))
             if isinstance(qa.get(key), str) and (run.shot_dir(sid) / Path(qa[key]).name).is_file()]
    return cell + (" (" + ", ".join(links) + ")" if links else "")


def render_report(run: RunDir, rows: list[dict[str, Any]], thumbs: dict[str, str], now: float,
                  live: bool = True) -> str:
    """The page. ``live``: a run is rendering into the directory; a page written when it ended (or
    with no run live) neither reloads itself nor counts elapsed time, pending shots or not (shots the
    cluster could not render stay pending for the next run)."""
    e = html.escape
    record = run.read_run() or {}
    run_id = record.get("run_id") or "?"
    started = (record.get("last_start") or {}).get("at") or record.get("created_at")
    counts = {state: sum(1 for r in rows if r["status"] == state) for state in STATES}
    unfinished = (counts["running"] + counts["pending"]) > 0 and live
    finished = [r["finished_at"].timestamp() for r in rows if r.get("finished_at") is not None]
    end = now if unfinished or not finished else max(finished)
    summary = "".join(f'<span class="{s}" id="count-{s}">{counts[s]} {s}</span>' for s in STATES)
    meta = [("run id", run_id), ("run directory", str(run.path)), ("started", _when(started)),
            ("elapsed", _elapsed(end - started) if started else ""), ("shots", str(len(rows))),
            ("page written", _when(now))]
    sheet = "".join(
        f'<figure data-shot="{e(sid)}"><a href="{e(_href(row["output"], run.path))}">'
        f'<img src="{e(quote(thumbs[sid]))}" alt="middle frame of {e(sid)}" loading="lazy"></a>'
        f"<figcaption>{e(sid)}</figcaption></figure>"
        for row in rows if (sid := row["shot_id"]) in thumbs)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if unfinished else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"{refresh}<title>s2v run {e(run_id)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>s2v run {e(run_id)}</h1>\n"
        f'<p class="summary" id="summary">{summary}</p>\n'
        '<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in meta) + "</dl>\n"
        f'<h2>Contact sheet</h2>\n<div class="sheet" id="sheet">{sheet or "<p>no published shot yet</p>"}</div>\n'
        '<h2>Shots</h2>\n<table id="shots"><thead><tr><th>shot</th><th>state</th><th>attempts</th><th>error</th>'
        "<th>output</th><th>size</th><th>duration</th><th>QA</th><th>thumbnail</th></tr></thead><tbody>\n"
        + "\n".join(_shot_row(run, r, thumbs.get(r["shot_id"])) for r in rows)
        + "\n</tbody></table>\n</body></html>\n"
    )


def write_report(run_dir: str | Path | RunDir, now: float | None = None, live: bool | None = None) -> Path:
    """(Re)write ``RUN_DIR/index.html`` from results.parquet and the ledger; returns its path.
    ``live`` (default: whether the run's lease is live) as in ``render_report``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if live is None:
        from cluster.lease import lease_is_live, read_lease

        live = lease_is_live(read_lease(run.path))
    if not run.results_file.is_file():
        raise FileNotFoundError(f"{run.results_file}: no results yet; the run writes it as it goes")
    rows = pq.read_table(run.results_file).to_pylist()
    thumbs = _thumbnails(run, rows)
    page = render_report(run, rows, thumbs, time.time() if now is None else now, live)
    return atomic_write_text(run.path / REPORT_FILE, page)


def refresh_report(run: RunDir, live: bool = True) -> None:
    """``write_report`` for the driver's loop: a page that cannot be written is a warning, never
    a reason to stop rendering (results.parquet, the run's record, was written just before)."""
    try:
        write_report(run, live=live)
    except Exception as exc:
        log.warning("report: %s not rewritten: %s", run.path / REPORT_FILE, exc)
