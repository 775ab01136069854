"""Long-form study: a long speech shot by the tiny model, the official hand-off vs the countermeasures.

The shot: an unseen character (``tinymodel.faces.random_character``, seed >= 9 000 000) speaking
held-out procedural speech (``tinymodel.speech.speech_track``, held-out voice seeds), rendered as
one sequential chain and as parallel segments (``render.shot.plan``: joins in pauses, crossfaded
as ``render.shot.stitch`` does), once per variant of ``render.model.handoff``'s settings. Each
video is measured in memory by ``render.quality.curves.shot_curves`` (per-clip colour drift vs
the reference, face similarity, lip-sync, the jump at every clip boundary and segment join), so
the render phase needs no PyAV and runs on the GPU machines too:

    python benchmarks/long_form_quality.py render --seconds 300 --steps 8 --device cuda --out DIR
        # DIR/rows.json (numbers per run) and DIR/<mode>-<variant>.png (its curves)
    python benchmarks/long_form_quality.py report DIR [DIR ...] --report TABLE.md
        # the table, and comparison plots in benchmarks/results/long_form/

``--variants official,latents`` picks variants by name (``VARIANTS``); ``--modes`` sequential,
parallel. Parallel segments are blended twice from the same frames: the stitcher's default
crossfade (``parallel``) and with the later segment's colours matched first (``parallel-cm``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

REFERENCE_SEED = 9_000_417  # unseen character (training used seeds < 10^6)
AUDIO_SEED = 9_100_417
SIZE = 128
RESULTS = Path(__file__).resolve().parent / "results"

# name -> RenderSettings fields changed from the official hand-off.
VARIANTS: dict[str, dict] = {
    "official": {},
    "latents": {"motion_handoff": "latents"},
    "colour50": {"colour_anchor": 0.5},
    "colour100": {"colour_anchor": 1.0},
    "identity30": {"identity_anchor": 0.3},
    "identity60": {"identity_anchor": 0.6},
    "latents+colour100": {"motion_handoff": "latents", "colour_anchor": 1.0},
    "colour100+identity30": {"colour_anchor": 1.0, "identity_anchor": 0.3},
    "all": {"motion_handoff": "latents", "colour_anchor": 1.0, "identity_anchor": 0.3},
}


# --- inputs ---------------------------------------------------------------------------------------


def shot_inputs(seconds: float, sample: int = 0):
    """(character, reference [3, H, W] in [0, 1], 16 kHz audio) of the study's shot ``sample``."""
    from tinymodel.faces import random_character, reference_frame
    from tinymodel.speech import speech_track

    character = random_character(np.random.default_rng(REFERENCE_SEED + sample))
    audio = speech_track(np.random.default_rng(AUDIO_SEED + sample), seconds, None, held_out=True, synth_fraction=1.0)
    return character, reference_frame(character, SIZE, SIZE), audio


# --- rendering ------------------------------------------------------------------------------------


def render_chain(renderer, shot, settings, segment: int, start_frame: int, clips: int):
    """uint8 frames [T, H, W, 3] of one chain of ``clips`` clips from ``start_frame``."""
    import torch

    from render.model.clip_loop import initial_chain_state

    state = initial_chain_state(settings, shot)
    out = []
    for c in range(clips):
        video, state = renderer.render_clip(shot, state, segment=segment,
                                            audio_offset=start_frame + c * settings.infer_frames)
        out.append(video)
    video = torch.cat(out, dim=1)
    return ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def blend(plan, segment_frames: list[np.ndarray], colour_match: bool) -> np.ndarray:
    """The shot's frames from its segments' frames, overlaps crossfaded as the stitcher does."""
    from render.quality.seams import crossfade_weight, match_colour

    out = [segment_frames[0][:plan.segments[0].num_frames]]
    for k in range(1, len(plan.segments)):
        spec = plan.segments[k]
        ov = spec.overlap_before
        prev = out[-1]
        tail, head = prev[-ov:], segment_frames[k][:ov]
        if colour_match:
            head = np.stack(match_colour(list(head), list(tail)))
        w = np.array([crossfade_weight(j, ov) for j in range(ov)], np.float32)[:, None, None, None]
        mixed = np.clip(np.rint(tail * (1 - w) + head * w), 0, 255).astype(np.uint8)
        out[-1] = prev[:-ov]
        out += [mixed, segment_frames[k][ov:spec.num_frames]]
    return np.concatenate(out)


def write_video(path_stem: Path, frames: np.ndarray, fps: int) -> Path:
    """Lossless FFV1 (OpenCV) where PyAV is missing, else a crf 0 H.264 MP4 (PyAV)."""
    try:
        from render.media.video import Mp4Writer

        path = path_stem.with_suffix(".mp4")
        with Mp4Writer(path, frames.shape[2], frames.shape[1], fps=fps, crf=0) as w:
            w.write(frames)
        return path
    except ImportError:
        import cv2

        path = path_stem.with_suffix(".mkv")
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (frames.shape[2], frames.shape[1]))
        if not vw.isOpened():
            raise RuntimeError(f"OpenCV cannot write FFV1 to {path}") from None
        for f in frames:
            vw.write(np.ascontiguousarray(f[..., ::-1]))
        vw.release()
        return path


def render_all(args) -> None:
    import torch

    from render.model.audio_features import frame_features
    from render.model.clip_loop import ChainRenderer, ShotConditioning
    from render.quality.plots import plot_curves
    from render.settings import RenderSettings
    from render.shot.plan import plan_segments
    from tinymodel.evaluate import load_model
    from tinymodel.faces import to_uint8

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, ref_rgb, audio = shot_inputs(args.seconds, args.sample)
    ref_u8 = to_uint8(ref_rgb[None])[0]
    model = load_model(args.ckpt, args.device)
    dit, vae = model.renderer_parts
    base = RenderSettings(size=f"{SIZE}*{SIZE}", steps=args.steps, seed=args.seed)
    plans = {"sequential": plan_segments(audio, base, "sequential"),
             "parallel": plan_segments(audio, base, "parallel", target_seconds=args.target_seconds,
                                       overlap_seconds=args.overlap_seconds)}
    frames_needed = max(s.start_frame + s.num_clips * base.infer_frames for p in plans.values() for s in p.segments)
    ref = ref_rgb * 2 - 1
    with torch.inference_mode():
        ref_lat = vae.encode(ref[:, None].to(model.device)).float()[None].cpu()
    features = frame_features(model.audio, audio, frames_needed, base.fps)
    shot = ShotConditioning(model.prompt, model.negative, ref_lat, ref, features, SIZE, SIZE)
    record = {"seconds": args.seconds, "steps": args.steps, "seed": args.seed, "device": _device_name(args.device),
              "ckpt": str(args.ckpt), "reference_seed": REFERENCE_SEED + args.sample,
              "audio_seed": AUDIO_SEED + args.sample, "overlap_seconds": args.overlap_seconds,
              "plans": {m: p.to_dict() for m, p in plans.items()}}
    rows = []
    for name in args.variants.split(","):
        settings = dataclasses.replace(base, **VARIANTS[name])
        renderer = ChainRenderer(dit, vae, settings, model.device, progress=False)
        for mode in args.modes.split(","):
            plan = plans[mode]
            t0 = time.time()
            segs = [render_chain(renderer, shot, settings, s.index, s.start_frame, s.num_clips) for s in plan.segments]
            wall = time.time() - t0
            # (The stitcher's colour matching changes only crossfaded frames, which the seam
            # measure skips by design, so it is not a separate run here.)
            label = mode + args.tag
            key = f"s{args.sample}-{label}-{name}"
            frames = blend(plan, segs, colour_match=False)[:plan.total_frames]
            curves = measure(frames, ref_u8, audio, base.fps, plan.joins)
            run = {"variant": name, "mode": label, "sample": args.sample, "settings": VARIANTS[name],
                   "clips": plan.num_clips,
                   "s_per_clip": round(wall / plan.num_clips, 3)}
            rows.append(row_of(key, run, curves))
            plot_curves(curves).save(out / f"{key}.png")
            if args.videos:
                write_video(out / key, frames, base.fps)
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("colour_de_per_clip", "face_per_clip")}), flush=True)
            (out / f"rows{args.tag}-s{args.sample}.json").write_text(json.dumps({"record": record, "rows": rows}, indent=1))


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


# --- measuring ------------------------------------------------------------------------------------


@contextlib.contextmanager
def frames_as_video(frames: np.ndarray, fps: int, samples_16k: np.ndarray):
    """Let ``render.quality.curves.shot_curves`` read ``frames`` (uint8 [T, H, W, 3]) and
    ``samples_16k`` from memory instead of decoding files: the GPU machines have no PyAV, and the
    frames are measured exactly as rendered (no codec in between). The frames are at most
    ``ANALYSIS_SIDE`` on a side, so the decode's scaler would have left them as they are."""
    import sys
    import types

    from render.quality import curves
    from render.quality.frame_measures import ANALYSIS_SIDE
    from render.quality.lipsync import frame_loudness_db

    if max(frames.shape[1:3]) > ANALYSIS_SIDE:
        raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} would be scaled to {ANALYSIS_SIDE}")
    info = types.SimpleNamespace(frames=len(frames), fps=float(fps), width=frames.shape[2], height=frames.shape[1])
    video_module = sys.modules.get("render.media.video") or types.ModuleType("render.media.video")
    saved = {name: getattr(curves, name) for name in ("decoded_small", "resize_like_frames",
                                                        "frame_loudness_streaming")}
    saved_probe = getattr(video_module, "probe_video", None)
    had_module = "render.media.video" in sys.modules
    curves.decoded_small = lambda _path, _side: iter(frames)
    curves.resize_like_frames = lambda rgb, _w, _h: rgb
    curves.frame_loudness_streaming = lambda _path, f, n: frame_loudness_db(samples_16k, 16000, f, n)
    video_module.probe_video = lambda _path: info
    sys.modules["render.media.video"] = video_module
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(curves, name, fn)
        if saved_probe is not None:
            video_module.probe_video = saved_probe
        if not had_module:
            del sys.modules["render.media.video"]


def measure(frames: np.ndarray, ref: np.ndarray, audio: np.ndarray, fps: int, joins) -> object:
    """``shot_curves`` of in-memory frames (see ``frames_as_video``)."""
    from render.quality.curves import shot_curves

    with frames_as_video(frames, fps, audio):
        return shot_curves("in-memory", ref, "in-memory", fps=fps, clip_frames=80,
                           segment_joins=[tuple(j) for j in joins])


def lipsync_per_window(curves, seconds: float) -> list[float | None]:
    """Lip-sync correlation over consecutive windows of ``seconds`` (None where not measurable)."""
    from render.quality.curves import LIPSYNC_MAX_LAG
    from render.quality.lipsync import lipsync_score

    if curves.loudness_db is None or curves.lipsync is None:
        return []
    n = int(round(seconds * curves.fps))
    out = []
    for a in range(0, curves.frames, n):
        b = min(curves.frames, a + n)
        if b - a < n // 2:
            break
        out.append(round(lipsync_score(curves.loudness_db[a:b], curves.mouth_opening[a:b], LIPSYNC_MAX_LAG)["corr"], 3))
    return out


def row_of(key: str, run: dict, curves) -> dict:
    clip_seams = [s.ratio for s in curves.seams if s.kind == "clip"]
    joins = [s.ratio for s in curves.seams if s.kind == "join"]
    drift = [(c.colour_de, c.lab_minus_ref) for c in curves.clips if c.colour_de is not None]
    worst_de, worst_lab = max(drift, key=lambda d: d[0])
    face = [c.face_similarity for c in curves.clips if c.face_similarity is not None]
    return {"key": key, "variant": run["variant"], "mode": run["mode"], "sample": run.get("sample", 0),
            "s_per_clip": run["s_per_clip"],
            "worst_clip_seam": round(max(clip_seams), 2) if clip_seams else None,
            "p95_clip_seam": round(float(np.percentile(clip_seams, 95)), 2) if clip_seams else None,
            "worst_join": round(max(joins), 2) if joins else None,
            "max_de": round(worst_de, 1), "max_lab": [round(v, 1) for v in worst_lab],
            "final_de": round(drift[-1][0], 1),
            "face_min": round(min(face), 3), "face_final": round(face[-1], 3),
            "lipsync": None if curves.lipsync is None else round(curves.lipsync["corr"], 3),
            "lipsync_per_min": lipsync_per_window(curves, 60.0),
            "colour_de_per_clip": [None if c.colour_de is None else round(c.colour_de, 2) for c in curves.clips],
            "face_per_clip": [None if c.face_similarity is None else round(c.face_similarity, 3) for c in curves.clips],
            "flags": len(curves.flags)}


def write_report(args) -> None:
    """The table (markdown) and the comparison plot from the rows of one or more render folders."""
    rows, records = [], []
    for folder in args.folders:
        for path in sorted(Path(folder).glob("rows*.json")):
            data = json.loads(path.read_text())
            rows += data["rows"]
            records.append(data["record"])
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for sample, mode in sorted({(r.get("sample", 0), r["mode"]) for r in rows}):
        comparison_plot([r for r in rows if r.get("sample", 0) == sample and r["mode"] == mode],
                        plots / f"comparison_s{sample}_{mode}.png")
    table = format_table(rows)
    print(table)
    if args.report:
        Path(args.report).write_text(table + "\n")


def format_table(rows: list[dict]) -> str:
    lines = ["| sample | mode | variant | worst clip seam x | p95 clip seam x | worst join x | max ΔE76 (ΔL, Δa, Δb) | "
             "final ΔE76 | face min / final | lip-sync shot | lip-sync per minute | s/clip |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.get("sample", 0), r["mode"], list(VARIANTS).index(r["variant"]))):
        lab = ", ".join(f"{v:+.0f}" for v in r["max_lab"])
        per_min = " ".join(f"{v:.2f}" for v in r["lipsync_per_min"]) or "-"
        lines.append(f"| {r.get('sample', 0)} | {r['mode']} | {r['variant']} | {_n(r['worst_clip_seam'])} | {_n(r['p95_clip_seam'])} | "
                     f"{_n(r['worst_join'])} | {r['max_de']:.1f} ({lab}) | {r['final_de']:.1f} | "
                     f"{r['face_min']:.2f} / {r['face_final']:.2f} | {_n(r['lipsync'])} | {per_min} | "
                     f"{r['s_per_clip']:.2f} |")
    return "\n".join(lines)


def _n(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def comparison_plot(rows: list[dict], path: Path) -> None:
    """Colour drift (ΔE76) and face similarity per clip, one line per run (PIL, no matplotlib)."""
    from PIL import Image, ImageDraw

    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    w, panel_h, left, legend_w = 900, 260, 50, 260
    img = Image.new("RGB", (w + legend_w, 2 * panel_h + 40), "white")
    d = ImageDraw.Draw(img)
    clips = max(len(r["colour_de_per_clip"]) for r in rows)
    for p, (field, lo, hi, title) in enumerate((("colour_de_per_clip", 0.0, None, "colour drift dE76 per clip"),
                                                 ("face_per_clip", 0.0, 1.0, "face similarity per clip"))):
        top = 20 + p * (panel_h + 20)
        vals = [v for r in rows for v in r[field] if v is not None]
        top_v = hi if hi is not None else max(vals + [1.0]) * 1.05
        bottom = top + panel_h - 20
        d.rectangle([left, top, w - 10, bottom], outline="black")
        d.text((left + 5, top + 3), title, fill="black")
        d.text((5, top), f"{top_v:.1f}", fill="black")
        d.text((5, bottom - 10), f"{lo:.1f}", fill="black")
        d.text((left, bottom + 3), "clip 1", fill="black")
        d.text((w - 60, bottom + 3), f"clip {clips}", fill="black")

        def xy(i: int, v: float, top: int = top, top_v: float = top_v, lo: float = lo) -> tuple[float, float]:
            x = left + (w - 10 - left) * (i + 0.5) / clips
            return x, top + (panel_h - 20) * (1 - (v - lo) / (top_v - lo))
        for k, r in enumerate(rows):
            pts = [xy(i, v) for i, v in enumerate(r[field]) if v is not None]
            if len(pts) > 1:
                d.line(pts, fill=palette[k % len(palette)], width=2)
    for k, r in enumerate(rows):
        y = 25 + 16 * k
        d.line([(w + 5, y + 6), (w + 25, y + 6)], fill=palette[k % len(palette)], width=3)
        d.text((w + 30, y), r["key"], fill="black")
    img.save(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="phase", required=True)
    r = sub.add_parser("render", help="render and measure the variants; rows.json and curve PNGs in --out")
    r.add_argument("--out", required=True)
    r.add_argument("--seconds", type=float, default=300.0)
    r.add_argument("--steps", type=int, default=8)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--ckpt", default="tinymodel/tiny-s2v")
    r.add_argument("--variants", default=",".join(VARIANTS))
    r.add_argument("--modes", default="sequential,parallel")
    r.add_argument("--target-seconds", type=float, default=30.0)
    r.add_argument("--overlap-seconds", type=float, default=0.5)
    r.add_argument("--sample", type=int, default=0, help="other character and audio (seeds + sample)")
    r.add_argument("--tag", default="", help="suffix of the mode's label (e.g. -ov1.0 for another overlap)")
    r.add_argument("--videos", action="store_true", help="also write each video (PyAV MP4 or OpenCV FFV1)")
    m = sub.add_parser("report", help="table and comparison plots from the rows.json of render folders")
    m.add_argument("folders", nargs="+")
    m.add_argument("--report", default=None, help="write the table here")
    m.add_argument("--plots", default=str(RESULTS / "long_form"), help="folder for the comparison plots")
    args = ap.parse_args(argv)
    if args.phase == "render":
        unknown = set(args.variants.split(",")) - set(VARIANTS)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        render_all(args)
    else:
        write_report(args)


if __name__ == "__main__":
    main()
