"""``RUN_DIR/index.html`` (cluster.report): built from a hand-made run directory with one
published and one failed shot, then opened from file:// in a real headless chromium."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cluster import report
from cluster.ledger import RunDir
from manifests import ResultRow, write_results
from render.media.atomic import atomic_write_json

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ERROR_TEXT = "segment 0: CUDA out of memory <script>alert('x')</script> & more"
GREEN, RED = (0, 200, 0), (200, 0, 0)


def _write_mp4(path: Path, frames: int = 12, fps: int = 12, size: tuple[int, int] = (96, 64)) -> None:
    """Red frames with green ones in the middle (4..7): the thumbnail must come out green."""
    import av

    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[:] = GREEN if 4 <= i <= 7 else RED
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    """A finished run: shot ``hero`` published (output outside the run directory), ``villain`` failed."""
    run = RunDir(tmp_path / "run")
    video = tmp_path / "out" / "hero.mp4"
    _write_mp4(video)
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    finished = datetime(2026, 1, 2, 3, 6, 10, tzinfo=UTC)
    run.write_run({"run_id": "cafe0123", "created_at": started.timestamp() - 3600,
                   "last_start": {"at": started.timestamp()}})
    atomic_write_json(run.published_file("hero"), {"output": str(video), "frames": 12, "duration_s": 1.0,
                                                   "fps": 12.0, "sha256": "ab" * 32,
                                                   "bytes": video.stat().st_size, "published_at": 0.0})
    write_results([
        ResultRow(shot_id="hero", status="done", attempts=1, output=str(video), sha256="ab" * 32,
                  duration_s=1.0, frames=12, fps=12.0, manifest_row=0, run_id="cafe0123", finished_at=finished),
        ResultRow(shot_id="villain", status="failed", attempts=3, error=ERROR_TEXT,
                  output=str(tmp_path / "out" / "villain.mp4"), manifest_row=1, run_id="cafe0123",
                  finished_at=finished, failure_stage="render"),
    ], run.results_file)
    atomic_write_json(run.shot_dir("hero") / "qa.json", {"inside": {"p50": 0.1, "p95": 0.25, "p99": 0.3},
                                                         "joins": [{"index": 1, "frame": 6, "value": 0.5,
                                                                    "ratio_p95": 1.75}],
                                                         "lipsync": {"corr": 0.612}})
    return run


def test_the_page_is_static_escaped_and_made_once_per_published_shot(run_dir, monkeypatch):
    page_path = report.write_report(run_dir)
    page = page_path.read_text()
    assert page_path == run_dir.path / "index.html"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "CUDA out of memory &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "inside p95 0.250; worst join 1.75x p95; lip-sync corr 0.612" in page
    assert "elapsed</dt><dd>2m 05s" in page  # last start to the last shot finished
    assert 'http-equiv="refresh"' not in page  # nothing left to do: no reloading
    thumbs = list((run_dir.path / "report").glob("*.jpg"))
    assert len(thumbs) == 1
    from PIL import Image

    r, g, b = Image.open(thumbs[0]).convert("RGB").getpixel((10, 10))
    assert g > 150 and r < 60, "the thumbnail is not the middle frame"
    # A second write reuses the thumbnail: no decoding.
    monkeypatch.setattr(report, "make_thumbnail", lambda *a: pytest.fail("thumbnail made twice"))
    report.write_report(run_dir)
    assert list((run_dir.path / "report").glob("*.jpg")) == thumbs


def test_a_missing_output_costs_only_its_thumbnail(run_dir, tmp_path, caplog):
    (tmp_path / "out" / "hero.mp4").unlink()
    report.refresh_report(run_dir)
    page = (run_dir.path / "index.html").read_text()
    assert 'data-shot="hero"' in page and "no published shot yet" in page
    assert "no thumbnail for shot hero" in caplog.text


def test_s2v_status_html_writes_the_page(run_dir, capsys):
    from s2v.cli import main

    (run_dir.path / "manifest.parquet").write_bytes(b"")  # status needs a manifest; an empty one fails
    code = main(["status", "--run-dir", str(run_dir.path), "--html"])
    assert (run_dir.path / "index.html").is_file()
    assert f"wrote {run_dir.path / 'index.html'}" in capsys.readouterr().err
    assert code != 0  # the unreadable manifest is status's own business; the page came first


@pytest.fixture
def browser_page(tmp_path):
    """A page of Debian's chromium, headless, through Playwright (never its own browser download)."""
    missing = None
    if not Path(CHROMIUM).is_file():
        missing = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing}; .ci/run installs both")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                           args=CHROMIUM_ARGS)
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_in_a_headless_browser(run_dir, browser_page, tmp_path):
    page_path = report.write_report(run_dir)
    page = browser_page
    page.goto(page_path.as_uri())
    page.wait_for_load_state("load")
    assert page.title() == "s2v run cafe0123"
    assert [page.inner_text(f"#count-{s}") for s in ("done", "failed", "pending")] == ["1 done", "1 failed",
                                                                                        "0 pending"]
    failed = page.locator('#shots tr[data-shot="villain"]')
    assert failed.locator("td.state").inner_text() == "failed"
    assert failed.locator("td.error").inner_text() == ERROR_TEXT  # shown as text, not run as markup
    hero = page.locator('#shots tr[data-shot="hero"]')
    assert hero.locator("a.output").get_attribute("href") == (tmp_path / "out" / "hero.mp4").as_uri()
    size = (tmp_path / "out" / "hero.mp4").stat().st_size
    assert hero.locator("td.num").all_inner_texts() == ["1", report._size(size), "1.00 s"]
    img = page.locator('#sheet figure[data-shot="hero"] img')
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete", arg=img.element_handle())
    width = img.evaluate("img => img.naturalWidth")
    assert width == 96, f"thumbnail not loaded (naturalWidth {width}; the video is 96 px wide, never upscaled)"
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    assert json.loads(json.dumps(page.evaluate("document.scripts.length"))) == 0


def test_a_page_of_a_run_that_ended_with_pending_shots_settles(run_dir):
    """Shots the cluster could not render stay pending after the run: the page of an ended run
    neither reloads nor keeps counting elapsed time; while a run is live it reloads."""
    from manifests.results import read_results, write_results

    rows = read_results(run_dir.results_file)
    rows[1].status, rows[1].error, rows[1].failure_stage, rows[1].finished_at = "pending", None, None, None
    write_results(rows, run_dir.results_file)
    ended = report.write_report(run_dir, now=10**10, live=False).read_text()
    assert 'http-equiv="refresh"' not in ended and "elapsed</dt><dd>2m 05s" in ended
    live = report.write_report(run_dir, now=10**10, live=True).read_text()
    assert 'http-equiv="refresh"' in live
    assert 'http-equiv="refresh"' not in report.write_report(run_dir).read_text()  # no lease: not live
