"""Long-chain quality of a tiny checkpoint on held-out characters and voices: seams, lip-sync,
features kept and colour drift over a minute of speech.

    python -m tinymodel.chain_eval --ckpt tinymodel/tiny-s2v --out chain.json [--seconds 60]
        [--samples 3] [--steps 8] [--corpus .cache/speech_corpus.npz] [--strip strip.png]

A shot is rendered as one chain of 80-frame clips through the product's clip loop
(``tinymodel.evaluate.render_speech``), so every clip after the first is conditioned on the
decoded last frames of the one before - the regime in which errors compound. Per sample:

- seams: frame change (mean abs RGB, 0..255) across each clip boundary vs the within-clip
  p50 / p95 (target: boundary <= 1.5x the within-clip p95);
- lip-sync over the whole shot (loudness vs mouth area, ``render.quality.lipsync``);
- features kept: per clip, the share of frames whose left eye, right eye and mouth are still
  where the reference has them (luminance correlation of the feature's box with the reference's,
  best over small shifts for the head's sway; the mouth by its lip/mouth-coloured pixels);
- colour drift: per clip, |Lab mean of the clip - Lab mean of the reference| (target <= 3).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from render.quality.lipsync import MOUTH_RGB, lipsync_of_video
from render.quality.seams import frame_change, rgb_to_lab
from tinymodel.faces import FPS, Character, random_character, reference_frame, to_uint8
from tinymodel.speech import SAMPLE_RATE, Corpus, speech_track
from tinymodel.windows import CLIP_FRAMES

EYE_KEPT_CORR = 0.5  # eye box luminance correlation with the reference at or above: the eye is there
MOUTH_KEPT_SHARE = 0.3  # lip/mouth-coloured pixels at least this share of the reference's: mouth there
COLOUR_TOLERANCE = 0.25  # RGB distance (0..1) under which a pixel has a feature's colour
SWAY_PX = 4  # the generator's head sway is at most 3% of the height (4 px at 128)


def seam_stats(frames: np.ndarray, clip_frames: int = CLIP_FRAMES) -> dict:
    """Frame change across clip boundaries vs inside clips; frames uint8 [T, H, W, 3]."""
    changes = np.array([frame_change(frames[i - 1], frames[i]) for i in range(1, len(frames))])
    at_boundary = np.zeros(len(changes), bool)
    at_boundary[np.arange(clip_frames, len(frames), clip_frames) - 1] = True
    inside, seams = changes[~at_boundary], changes[at_boundary]
    p95 = float(np.percentile(inside, 95))
    return {
        "within_p50": round(float(np.percentile(inside, 50)), 3), "within_p95": round(p95, 3),
        "boundaries": [round(float(s), 3) for s in seams],
        "boundary_mean_over_p95": round(float(seams.mean()) / p95, 3) if len(seams) else None,
        "boundary_max_over_p95": round(float(seams.max()) / p95, 3) if len(seams) else None,
    }


def _box(ch: Character, size: int, cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice]:
    """Pixel box of an ellipse at (cx, cy) (fractions of the height) widened by the sway."""
    x0 = (cx - rx - 0.5) * size + size / 2
    x1 = (cx + rx - 0.5) * size + size / 2
    y0, y1 = (cy - ry) * size, (cy + ry) * size
    pad = 1
    return (slice(max(0, int(y0) - pad), min(size, int(np.ceil(y1)) + pad)),
            slice(max(0, int(x0) - pad), min(size, int(np.ceil(x1)) + pad)))


def _luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _best_corr(frame_luma: np.ndarray, ref_patch: np.ndarray, ys: slice, xs: slice) -> float:
    """Highest correlation of ``ref_patch`` with the frame's box at (ys, xs) shifted by up to SWAY_PX."""
    h, w = ref_patch.shape
    r = ref_patch - ref_patch.mean()
    rn = float(np.sqrt((r * r).sum())) or 1.0
    best = -1.0
    for dy in range(-SWAY_PX, SWAY_PX + 1):
        for dx in range(-SWAY_PX, SWAY_PX + 1):
            y0, x0 = ys.start + dy, xs.start + dx
            if y0 < 0 or x0 < 0 or y0 + h > frame_luma.shape[0] or x0 + w > frame_luma.shape[1]:
                continue
            p = frame_luma[y0:y0 + h, x0:x0 + w]
            p = p - p.mean()
            pn = float(np.sqrt((p * p).sum()))
            if pn > 0:
                best = max(best, float((p * r).sum()) / (pn * rn))
    return best


def feature_boxes(ch: Character, size: int) -> dict[str, tuple[slice, slice]]:
    eye_y = ch.cy + ch.eye_y
    boxes = {side: _box(ch, size, ch.cx + sgn * ch.eye_dx, eye_y, ch.eye_r, ch.eye_r * 1.15)
             for side, sgn in (("left_eye", -1), ("right_eye", 1))}
    mouth_y = ch.cy + ch.mouth_y
    boxes["mouth"] = _box(ch, size, ch.cx, mouth_y, ch.mouth_w + 0.03, ch.mouth_h + 0.03)
    return boxes


def _mouth_pixels(img: np.ndarray, ch: Character) -> int:
    f = img.astype(np.float32) / 255.0
    lip = np.linalg.norm(f - np.asarray(ch.lip, np.float32), axis=-1) < COLOUR_TOLERANCE
    inner = np.linalg.norm(f - np.asarray(MOUTH_RGB, np.float32), axis=-1) < COLOUR_TOLERANCE
    return int((lip | inner).sum())


def features_kept(frames: np.ndarray, ref: np.ndarray, ch: Character, clip_frames: int = CLIP_FRAMES) -> dict:
    """Per feature, per clip: share of frames in which it is still there (see the module doc)."""
    size = ref.shape[0]
    boxes = feature_boxes(ch, size)
    ref_luma = _luma(ref)
    out: dict[str, list[float]] = {}
    for name, (ys, xs) in boxes.items():
        if name == "mouth":
            # The mouth box widened by the sway: the lips move with the head.
            ys_w = slice(max(0, ys.start - SWAY_PX), min(size, ys.stop + SWAY_PX))
            xs_w = slice(max(0, xs.start - SWAY_PX), min(size, xs.stop + SWAY_PX))
            need = MOUTH_KEPT_SHARE * max(1, _mouth_pixels(ref[ys, xs], ch))
            kept = np.array([_mouth_pixels(f[ys_w, xs_w], ch) >= need for f in frames])
        else:
            patch = ref_luma[ys, xs]
            kept = np.array([_best_corr(_luma(f), patch, ys, xs) >= EYE_KEPT_CORR for f in frames])
        out[name] = [round(float(kept[i:i + clip_frames].mean()), 3) for i in range(0, len(frames), clip_frames)]
    return out


def colour_drift(frames: np.ndarray, ref: np.ndarray, clip_frames: int = CLIP_FRAMES) -> list[float]:
    """Per clip: Euclidean distance of the clip's Lab mean from the reference's Lab mean."""
    ref_lab = rgb_to_lab(ref).reshape(-1, 3).mean(0)
    out = []
    for i in range(0, len(frames), clip_frames):
        lab = rgb_to_lab(frames[i:i + clip_frames, ::2, ::2]).reshape(-1, 3).mean(0)
        out.append(round(float(np.linalg.norm(lab - ref_lab)), 2))
    return out


def chain_metrics(frames: np.ndarray, ref: np.ndarray, ch: Character, audio: np.ndarray) -> dict:
    """All metrics of one rendered chain (frames uint8 [T, H, W, 3], ref uint8 [H, W, 3])."""
    kept = features_kept(frames, ref, ch)
    drift = colour_drift(frames, ref)
    return {
        "seams": seam_stats(frames),
        "lipsync": lipsync_of_video(frames, audio, SAMPLE_RATE, FPS)["corr"],
        "lipsync_first_10s": lipsync_of_video(frames[:10 * FPS], audio[:10 * SAMPLE_RATE], SAMPLE_RATE, FPS)["corr"],
        "features_kept": kept,
        "features_kept_min": {k: min(v) for k, v in kept.items()},
        "colour_drift_per_clip": drift,
        "colour_drift_max": max(drift),
    }


def summarise(rows: list[dict]) -> dict:
    """Means over samples of the headline numbers."""
    seams = [r["seams"] for r in rows]
    return {
        "boundary_mean_over_p95": round(float(np.mean([s["boundary_mean_over_p95"] for s in seams])), 3),
        "boundary_max_over_p95": round(float(np.max([s["boundary_max_over_p95"] for s in seams])), 3),
        "boundary_mean": round(float(np.mean([np.mean(s["boundaries"]) for s in seams])), 3),
        "within_p50": round(float(np.mean([s["within_p50"] for s in seams])), 3),
        "within_p95": round(float(np.mean([s["within_p95"] for s in seams])), 3),
        "lipsync_mean": round(float(np.mean([r["lipsync"] for r in rows])), 3),
        "lipsync_min": round(float(np.min([r["lipsync"] for r in rows])), 3),
        "lipsync_first_10s_mean": round(float(np.mean([r["lipsync_first_10s"] for r in rows])), 3),
        "features_kept_last_clip": {k: round(float(np.mean([r["features_kept"][k][-1] for r in rows])), 3)
                                    for k in rows[0]["features_kept"]},
        "features_kept_min_clip": {k: round(float(np.min([r["features_kept_min"][k] for r in rows])), 3)
                                   for k in rows[0]["features_kept"]},
        "colour_drift_first_clip": round(float(np.mean([r["colour_drift_per_clip"][0] for r in rows])), 2),
        "colour_drift_last_clip": round(float(np.mean([r["colour_drift_per_clip"][-1] for r in rows])), 2),
        "colour_drift_max": round(float(np.max([r["colour_drift_max"] for r in rows])), 2),
    }


def boundary_strip(videos: list[np.ndarray], refs: list[np.ndarray], boundaries: list[int]) -> np.ndarray:
    """One row per sample: the reference, then frames b-2, b-1, b, b+1 around each clip boundary b
    (clip index), a white gap between groups."""
    rows = []
    for v, ref in zip(videos, refs):
        gap = np.full((ref.shape[0], 4, 3), 255, np.uint8)
        parts = [ref, gap]
        for b in boundaries:
            f = b * CLIP_FRAMES
            parts += [v[min(max(i, 0), len(v) - 1)] for i in (f - 2, f - 1, f, f + 1)] + [gap]
        rows.append(np.concatenate(parts, axis=1))
    return np.concatenate(rows, axis=0)


def evaluate_chain(ckpt: str | Path, device: str = "cpu", samples: int = 3, seconds: float = 60.0, steps: int = 8,
                   guidance: float = 4.5, corpus: str | Path | None = None, seed: int = 0, size: int = 128,
                   keep_frames: bool = False) -> dict:
    """Render ``samples`` held-out characters speaking ``seconds`` of held-out audio as one chain
    each and measure them (the same characters and audio as ``evaluate_lipsync`` at equal seed)."""
    from render.settings import RenderSettings
    from tinymodel.evaluate import EVAL_SEED_BASE, load_model, render_speech

    model = load_model(ckpt, device)
    settings = RenderSettings(size=f"{size}*{size}", steps=steps, guidance=guidance, seed=seed)
    corp = Corpus(corpus) if corpus is not None else None
    rows, videos, refs = [], [], []
    for i in range(samples):
        rng = np.random.default_rng(EVAL_SEED_BASE + seed * 1000 + i)
        ch = random_character(rng)
        audio = speech_track(rng, seconds, corp, held_out=True, synth_fraction=0.0 if corp else 1.0)
        ref_rgb = reference_frame(ch, size, size)
        frames = render_speech(model, ref_rgb, audio, settings)
        ref = to_uint8(ref_rgb[None])[0]
        rows.append(chain_metrics(frames, ref, ch, audio))
        if keep_frames:
            videos.append(frames)
            refs.append(ref)
    out = {"summary": summarise(rows), "per_sample": rows, "steps": steps, "guidance": guidance,
           "seconds": seconds, "samples": samples, "device": device}
    if keep_frames:
        out["videos"], out["refs"] = videos, refs
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="checkpoint folder (official layout)")
    ap.add_argument("--out", required=True, help="JSON file for the metrics")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--corpus", default=None, help="speech corpus .npz (held-out sentences); default procedural")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strip", default=None, help="PNG of frames around clip boundaries")
    ap.add_argument("--frames", default=None, help=".npz of the rendered frames (uint8), for later pictures")
    args = ap.parse_args(argv)
    if args.seconds * FPS <= CLIP_FRAMES:
        ap.error(f"--seconds {args.seconds:g}: the chain needs at least 2 clips (more than {CLIP_FRAMES / FPS:g} s "
                 f"at {FPS} fps) to have a clip boundary to measure")
    res = evaluate_chain(args.ckpt, args.device, args.samples, args.seconds, args.steps, args.guidance, args.corpus,
                         args.seed, keep_frames=bool(args.strip or args.frames))
    videos, refs = res.pop("videos", None), res.pop("refs", None)
    if args.strip:
        from PIL import Image

        clips = -(-len(videos[0]) // CLIP_FRAMES)
        picks = sorted({1, 2, clips // 2, clips - 1} - {0}) if clips > 1 else []
        Image.fromarray(boundary_strip(videos, refs, picks)).save(args.strip)
    if args.frames:
        np.savez_compressed(args.frames, **{f"sample{i}": v for i, v in enumerate(videos)},
                            **{f"ref{i}": r for i, r in enumerate(refs)})
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))
    return res


if __name__ == "__main__":
    main()
