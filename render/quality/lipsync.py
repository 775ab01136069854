"""Lip-sync metric for the tiny trained model: audio loudness vs measured mouth opening per frame.

The tiny model (``tinymodel/``) is trained on procedurally drawn characters whose open mouth is
filled with one colour, :data:`MOUTH_RGB`, that nothing else in those pictures uses. So the mouth
opening of a frame can be measured as the area of that colour, and lip-sync as the correlation of
that area with the audio's loudness, frame by frame, at the best of a few lags (a model that is
one frame late still follows the audio, and the lag says so).

The same two definitions drive the data generator (mouth opening = :func:`mouth_target`) and the
measurement, so the generator's own videos score ~1 and a model that ignores audio scores ~0.
This metric is specific to pictures of that kind; it does not measure lip-sync of real faces.
"""

from __future__ import annotations

import numpy as np

# The colour of the inside of an open mouth in the tiny model's world (RGB in [0, 1]).
MOUTH_RGB = (0.45, 0.04, 0.10)
# Pixels within this RGB distance of MOUTH_RGB count (linearly less towards the edge), which
# tolerates H.264 chroma subsampling at the mouth's rim.
MOUTH_TOLERANCE = 0.25
# Loudness range mapped to mouth opening: quieter than this below the utterance's loud level is
# a closed mouth.
LOUDNESS_FLOOR_DB = -35.0
LOUDNESS_SPAN_DB = 30.0


def frame_loudness_db(samples: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """Loudness of each video frame: RMS over one frame period centred on the frame's time,
    in dB relative to the utterance's loud level (95th percentile of frame RMS). float32 [num_frames];
    frames past the end of the audio are silence (LOUDNESS_FLOOR_DB)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [N], got shape {x.shape}")
    half = sample_rate / fps / 2.0
    centres = np.arange(num_frames) * (sample_rate / fps)
    lo = np.clip(np.round(centres - half).astype(np.int64), 0, len(x))
    hi = np.clip(np.round(centres + half).astype(np.int64), 0, len(x))
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    n = np.maximum(hi - lo, 1)
    rms = np.sqrt(np.maximum(csum[hi] - csum[lo], 0.0) / n)
    rms[hi <= lo] = 0.0
    loud = np.percentile(rms, 95) if rms.size else 0.0
    if loud <= 1e-8:
        return np.full(num_frames, LOUDNESS_FLOOR_DB, np.float32)
    db = 20.0 * np.log10(np.maximum(rms, 1e-8) / loud)
    return np.clip(db, LOUDNESS_FLOOR_DB, 6.0).astype(np.float32)


def mouth_target(loudness_db: np.ndarray) -> np.ndarray:
    """Mouth opening in [0, 1] the generator draws for each frame's loudness (lightly smoothed
    over neighbouring frames, as real mouths cannot jump)."""
    o = np.clip((np.asarray(loudness_db, np.float64) - LOUDNESS_FLOOR_DB) / LOUDNESS_SPAN_DB, 0.0, 1.0)
    if o.size >= 3:
        padded = np.concatenate([o[:1], o, o[-1:]])
        o = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return o.astype(np.float32)


def measure_mouth_opening(frames: np.ndarray) -> np.ndarray:
    """Mouth area per frame (fraction of the picture in the mouth colour), float32 [T].

    frames: uint8 [T, H, W, 3] or float [T, H, W, 3] in [0, 1].
    """
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {f.shape}")
    f = f.astype(np.float32) / 255.0 if f.dtype == np.uint8 else f.astype(np.float32)
    dist = np.linalg.norm(f - np.asarray(MOUTH_RGB, np.float32), axis=-1)
    score = np.clip(1.0 - dist / MOUTH_TOLERANCE, 0.0, 1.0)
    return score.mean(axis=(1, 2)).astype(np.float32)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def lipsync_score(loudness_db: np.ndarray, opening: np.ndarray, max_lag: int = 4) -> dict:
    """Pearson correlation of loudness and mouth opening at lags -max_lag..max_lag frames.

    A positive lag means the mouth follows the audio ``lag`` frames late. Returns
    ``{"corr": best, "lag": its lag, "corr_lag0": at lag 0, "frames": n}``.
    """
    a = np.asarray(loudness_db, np.float64)
    m = np.asarray(opening, np.float64)
    n = min(len(a), len(m))
    a, m = a[:n], m[:n]
    if n < 2 * max_lag + 8:
        raise ValueError(f"lip-sync needs at least {2 * max_lag + 8} frames, got {n}")
    best = (-2.0, 0)
    by_lag = {}
    # Smallest |lag| first, so ties (e.g. a mouth that never moves) report lag 0.
    for lag in sorted(range(-max_lag, max_lag + 1), key=abs):
        if lag >= 0:
            c = _pearson(a[: n - lag], m[lag:])
        else:
            c = _pearson(a[-lag:], m[: n + lag])
        by_lag[lag] = c
        if c > best[0]:
            best = (c, lag)
    return {"corr": round(best[0], 4), "lag": best[1], "corr_lag0": round(by_lag[0], 4), "frames": n}


def lipsync_of_video(frames: np.ndarray, samples: np.ndarray, sample_rate: int, fps: float,
                     max_lag: int = 4) -> dict:
    """Lip-sync score of decoded frames [T, H, W, 3] against their audio."""
    loud = frame_loudness_db(samples, sample_rate, fps, len(frames))
    return lipsync_score(loud, measure_mouth_opening(frames), max_lag)
