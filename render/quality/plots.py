"""Pictures and files of a shot's quality curves (render/quality/curves.py).

* ``plot_curves``: a PNG of the curves over the shot's duration (colour drift, face similarity,
  seam jumps, lip-sync, motion), clip boundaries and segment joins marked, thresholds drawn;
* ``contact_sheet``: the reference and the frames just before and after the worst seams,
  labelled with the time and the jump;
* ``write_qa_files``: those two PNGs and the curves' JSON, each written atomically;
* ``format_table``: the per-clip table ``s2v qa`` prints.

Drawn with Pillow (already a dependency) rather than matplotlib, which the project does not
depend on: a few line plots do not justify a large dependency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from render.media.atomic import atomic_write, atomic_write_text
from render.quality.curves import ShotCurves

PLOT_WIDTH = 1200
PANEL_HEIGHT = 150
MARGIN_LEFT, MARGIN_RIGHT, PANEL_GAP = 70, 20, 34
SHEET_FRAME_HEIGHT = 144  # contact-sheet frames are scaled to this height
SHEET_LABEL_WIDTH = 420

_BG, _AXIS, _GRID = (255, 255, 255), (60, 60, 60), (225, 225, 225)
_CLIP_LINE, _JOIN_BAND = (200, 200, 215), (255, 214, 170)
_LINE, _MEAN, _THRESHOLD, _FLAG = (40, 90, 170), (20, 20, 20), (210, 40, 40), (190, 0, 0)
_JOIN_STEM, _CLIP_STEM = (230, 120, 20), (70, 110, 180)


def _font(size: int = 13) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass(frozen=True)
class QaFiles:
    json: Path
    plot: Path
    sheet: Path


def files_beside(video: str | Path) -> QaFiles:
    """NAME.qa.json, NAME.qa.png and NAME.seams.png beside NAME.mp4."""
    v = Path(video)
    stem = v.with_suffix("")
    return QaFiles(stem.with_name(stem.name + ".qa.json"), stem.with_name(stem.name + ".qa.png"),
                   stem.with_name(stem.name + ".seams.png"))


def write_qa_files(curves: ShotCurves, files: QaFiles) -> QaFiles:
    """The curves' JSON, plot and contact sheet at ``files``, each atomically (temp + rename): a
    failure leaves any earlier file at that path as it was, never a part of a new one."""
    for p in (files.json, files.plot, files.sheet):
        p.parent.mkdir(parents=True, exist_ok=True)
    _save_png(plot_curves(curves), files.plot)
    _save_png(contact_sheet(curves), files.sheet)
    atomic_write_text(files.json, json.dumps(curves.to_dict(), indent=1) + "\n")
    return files


def _save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=False))


# --- the plot ------------------------------------------------------------------------------------


class _Panel:
    """One panel: value axis ``lo..hi`` over the shot's frames, in a box of the image."""

    def __init__(self, draw: ImageDraw.ImageDraw, top: int, frames: int, lo: float, hi: float, title: str):
        self.d, self.top, self.frames = draw, top, max(1, frames)
        self.lo, self.hi = lo, hi if hi > lo else lo + 1.0
        self.x0, self.x1 = MARGIN_LEFT, PLOT_WIDTH - MARGIN_RIGHT
        self.y0, self.y1 = top, top + PANEL_HEIGHT
        draw.text((self.x0, top - 17), title, fill=_AXIS, font=_font(13))

    def x(self, frame: float) -> float:
        return self.x0 + (self.x1 - self.x0) * frame / self.frames

    def y(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        return self.y1 - (self.y1 - self.y0) * (v - self.lo) / (self.hi - self.lo)

    def frame_box(self) -> None:
        self.d.rectangle((self.x0, self.y0, self.x1, self.y1), outline=_AXIS)
        for v in np.linspace(self.lo, self.hi, 3):
            y = self.y(v)
            self.d.line((self.x0 - 4, y, self.x0, y), fill=_AXIS)
            self.d.text((4, y - 7), f"{v:.3g}", fill=_AXIS, font=_font(11))

    def hline(self, v: float, colour, label: str | None = None) -> None:
        y = self.y(v)
        for xa in range(int(self.x0), int(self.x1), 12):  # dashed
            self.d.line((xa, y, min(xa + 6, self.x1), y), fill=colour, width=1)
        if label:
            self.d.text((self.x1 - 150, y - 14), label, fill=colour, font=_font(11))

    def series(self, values: np.ndarray, colour) -> None:
        """Per-frame values; more frames than pixels: each column shows the min..max of its frames."""
        v = np.asarray(values, np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            return
        cols = int(self.x1 - self.x0)
        if len(v) <= cols:
            pts = [(self.x(i + 0.5), self.y(float(v[i]))) for i in range(len(v)) if ok[i]]
            if len(pts) > 1:
                self.d.line(pts, fill=colour, width=1)
            return
        edges = np.linspace(0, len(v), cols + 1).astype(int)
        prev = None
        for c in range(cols):
            seg = v[edges[c]: edges[c + 1]]
            seg = seg[np.isfinite(seg)]
            if not seg.size:
                continue
            x = self.x0 + c
            self.d.line((x, self.y(float(seg.min())), x, self.y(float(seg.max()))), fill=colour)
            if prev is not None:
                self.d.line((prev[0], prev[1], x, self.y(float(seg.mean()))), fill=colour)
            prev = (x, self.y(float(seg.mean())))

    def steps(self, spans: list[tuple[int, int, float | None]], colour, width: int = 3) -> None:
        for a, b, v in spans:
            if v is not None:
                self.d.line((self.x(a), self.y(v), self.x(b), self.y(v)), fill=colour, width=width)


def _marks(d: ImageDraw.ImageDraw, panel: _Panel, curves: ShotCurves) -> None:
    """Segment joins as shaded bands, clip boundaries as thin lines."""
    for a, n in curves.joins:
        d.rectangle((panel.x(a), panel.y0 + 1, max(panel.x(a + n), panel.x(a) + 2), panel.y1 - 1), fill=_JOIN_BAND)
    if len(curves.clips) > (panel.x1 - panel.x0) // 4:  # too dense to tell apart: the seam panel has them
        return
    for s in curves.seams:
        if s.kind == "clip":
            d.line((panel.x(s.frame), panel.y0 + 1, panel.x(s.frame), panel.y1 - 1), fill=_CLIP_LINE)


def plot_curves(curves: ShotCurves) -> Image.Image:
    th = curves.thresholds
    clip_spans = [(c.start_frame, c.end_frame) for c in curves.clips]
    panels: list[tuple[str, tuple[float, float], Callable[[_Panel], None]]] = []

    def colour_panel(p: _Panel) -> None:
        p.series(curves.colour_de, _LINE)
        p.steps([(a, b, c.colour_de) for (a, b), c in zip(clip_spans, curves.clips)], _MEAN)
        p.hline(th.colour_drift_de, _THRESHOLD, f"threshold {th.colour_drift_de:g}")

    def face_panel(p: _Panel) -> None:
        p.series(curves.face_similarity, _LINE)
        p.steps([(a, b, c.face_similarity) for (a, b), c in zip(clip_spans, curves.clips)], _MEAN)
        p.hline(th.face_similarity, _THRESHOLD, f"threshold {th.face_similarity:g}")

    def seam_panel(p: _Panel) -> None:
        for s in curves.seams:
            x = p.x(s.frame)
            colour = _JOIN_STEM if s.kind == "join" else _CLIP_STEM
            p.d.line((x, p.y(0), x, p.y(s.ratio)), fill=colour, width=3 if s.kind == "join" else 2)
            if s.ratio > th.seam_ratio:
                p.d.text((x + 3, p.y(s.ratio)), f"{s.ratio:.1f}x", fill=_FLAG, font=_font(11))
        p.hline(th.seam_ratio, _THRESHOLD, f"threshold {th.seam_ratio:g}x")

    def lipsync_panel(p: _Panel) -> None:
        p.hline(0.0, _GRID)
        p.steps([(a, b, c.lipsync) for (a, b), c in zip(clip_spans, curves.clips)], _LINE, width=4)
        if curves.lipsync is not None:
            p.hline(th.lipsync_corr, _THRESHOLD, f"threshold {th.lipsync_corr:g}")

    def motion_panel(p: _Panel) -> None:
        p.series(curves.picture_change, _LINE)

    if curves.colour_de is not None:
        hi = max(th.colour_drift_de * 1.5, float(np.nanmax(curves.colour_de)) if curves.frames else 0.0)
        panels.append(("colour drift: dE76 (CIE76) of the mean Lab colour vs the reference (bars: clip means)",
                       (0.0, hi), colour_panel))
    if curves.face_similarity is not None:
        panels.append(("face similarity: NCC of the central region vs the reference (bars: clip means)",
                       (min(0.0, float(np.nanmin(curves.face_similarity))), 1.0), face_panel))
    worst = max((s.ratio for s in curves.seams), default=0.0)
    panels.append(("seam jump: x within-clip p95 at the same distance (orange: segment joins, blue: clip "
                   "boundaries)", (0.0, max(th.seam_ratio * 1.5, worst * 1.1)), seam_panel))
    panels.append((f"lip-sync per clip (tiny-model characters only): {curves.lipsync_note}", (-1.0, 1.0),
                   lipsync_panel))
    pc = curves.picture_change
    panels.append(("motion: frame-to-frame change, mean |dRGB| (0..255)",
                   (0.0, max(1.0, float(np.nanmax(pc)) if np.isfinite(pc).any() else 1.0)), motion_panel))

    title_h = 46
    height = title_h + len(panels) * (PANEL_HEIGHT + PANEL_GAP) + 30
    img = Image.new("RGB", (PLOT_WIDTH, height), _BG)
    d = ImageDraw.Draw(img)
    d.text((MARGIN_LEFT, 6), f"{Path(curves.video).name}: {curves.frames} frames, {curves.frames / curves.fps:.1f} s "
           f"at {curves.fps:g} fps, {len(curves.clips)} clips, {len(curves.joins)} joins", fill=_AXIS, font=_font(14))
    d.text((MARGIN_LEFT, 24), "FLAGGED: " + ", ".join(f.kind for f in curves.flags) if curves.flags else "no flags",
           fill=_FLAG if curves.flags else (30, 130, 30), font=_font(13))
    top = title_h + 18
    last = None
    for title, (lo, hi), draw_panel in panels:
        p = _Panel(d, top, curves.frames, lo, hi, title)
        _marks(d, p, curves)
        draw_panel(p)
        p.frame_box()
        last = p
        top += PANEL_HEIGHT + PANEL_GAP
    _time_axis(d, last, curves)
    return img


def _time_axis(d: ImageDraw.ImageDraw, p: _Panel, curves: ShotCurves) -> None:
    seconds = curves.frames / curves.fps
    step = next((s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800) if seconds / s <= 12), 3600)
    t = 0.0
    while t <= seconds + 1e-9:
        x = p.x(t * curves.fps)
        d.line((x, p.y1, x, p.y1 + 4), fill=_AXIS)
        label = f"{t:g} s" if seconds < 120 else f"{int(t // 60)}:{int(t % 60):02d}"
        d.text((x - 10, p.y1 + 6), label, fill=_AXIS, font=_font(11))
        t += step


# --- the contact sheet ---------------------------------------------------------------------------


def _scaled(frame: np.ndarray) -> Image.Image:
    img = Image.fromarray(frame)
    w = max(1, round(img.width * SHEET_FRAME_HEIGHT / img.height))
    return img.resize((w, SHEET_FRAME_HEIGHT), Image.Resampling.BILINEAR)


def contact_sheet(curves: ShotCurves) -> Image.Image:
    """Reference, then one row per kept seam (worst first): the frame before and after it."""
    th = curves.thresholds
    rows = sorted((s for s in curves.seams if s.frame in curves.seam_frames), key=lambda s: -s.ratio)[: curves.sheet_rows]
    fw = round(curves.width * SHEET_FRAME_HEIGHT / max(1, curves.height))
    pad = 8
    width = pad * 3 + 2 * fw + SHEET_LABEL_WIDTH
    height = pad + (SHEET_FRAME_HEIGHT + pad) * (1 + max(1, len(rows))) + 20
    img = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(img)
    y = pad
    if curves.reference_thumb is not None:
        img.paste(_scaled(curves.reference_thumb), (pad, y))
        ref_label = "reference (as the model saw it)"
    else:
        ref_label = "no reference image given"
    d.text((pad * 3 + 2 * fw, y + 4), ref_label, fill=_AXIS, font=_font(13))
    d.text((pad * 3 + 2 * fw, y + 24), f"{len(curves.seams)} seams; showing the {len(rows)} worst "
           "(left: last frame before, right: first after)", fill=_AXIS, font=_font(12))
    y += SHEET_FRAME_HEIGHT + pad
    if not rows:
        d.text((pad, y + 4), "no clip boundary or segment join in this shot", fill=_AXIS, font=_font(13))
    for s in rows:
        before, after = curves.seam_frames[s.frame]
        img.paste(_scaled(before), (pad, y))
        img.paste(_scaled(after), (pad * 2 + fw, y))
        flagged = s.ratio > th.seam_ratio
        x = pad * 3 + 2 * fw
        d.text((x, y + 4), f"{s.label} at {s.time_s:.2f} s: {s.ratio:.1f}x" + ("  FLAGGED" if flagged else ""),
               fill=_FLAG if flagged else _AXIS, font=_font(14))
        crossfade = f", across a {s.span}-frame crossfade" if s.span else ""
        d.text((x, y + 26), f"colour dE76 {s.colour:.1f} (within-clip p95 {_num(s.colour_p95)})", fill=_AXIS,
               font=_font(12))
        d.text((x, y + 44), f"picture {s.picture:.1f} (within-clip p95 {_num(s.picture_p95)}){crossfade}",
               fill=_AXIS, font=_font(12))
        y += SHEET_FRAME_HEIGHT + pad
    return img


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


# --- the table -----------------------------------------------------------------------------------


def format_table(curves: ShotCurves) -> str:
    """Per-clip rows, then seams and flags, as ``s2v qa`` prints them."""
    def f(v, spec: str) -> str:
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    lines = [f"{'seg':>3} {'clip':>4} {'start s':>8} {'end s':>8} {'ΔE76':>7} {'face':>6} {'lipsync':>7} "
             f"{'motion95':>8} {'seam x':>7}"]
    for c in curves.clips:
        lines.append(f"{c.segment:>3} {c.index:>4} {c.start_s:>8.2f} {c.end_s:>8.2f} {f(c.colour_de, '7.2f')} "
                     f"{f(c.face_similarity, '6.3f')} {f(c.lipsync, '7.3f')} {c.motion_p95:>8.3f} "
                     f"{f(c.seam_ratio, '7.2f')}")
    for s in curves.seams:
        lines.append(f"{s.label} at {s.time_s:.2f} s: {s.ratio:.2f}x (colour ΔE76 {s.colour:.2f} vs p95 "
                     f"{_num(s.colour_p95)}; picture {s.picture:.2f} vs p95 {_num(s.picture_p95)}; "
                     f"{s.lag} frame(s) apart)")
    if curves.lipsync is not None:
        ls = curves.lipsync
        lines.append(f"lip-sync: corr {ls['corr']:.3f} at lag {ls['lag']:+d} (tiny-model characters only)")
    else:
        lines.append(f"lip-sync: {curves.lipsync_note}")
    lines += [f"FLAG {fl}" for fl in curves.flags] or ["no flags"]
    return "\n".join(lines)
