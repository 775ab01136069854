"""Procedural demo inputs: speech-like audio with pauses and a cartoon face, no downloads."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def speech_like_audio(seconds: float = 10.0, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Syllables (a voiced source through two vowel formants) in words separated by pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, np.float32)
    t = 0.25
    while t < seconds - 0.3:
        for _ in range(int(rng.integers(2, 6))):  # syllables of one word
            dur = float(rng.uniform(0.12, 0.25))
            if t + dur > seconds - 0.1:
                break
            i0, i1 = int(t * sample_rate), int((t + dur) * sample_rate)
            tt = np.arange(i1 - i0) / sample_rate
            f0 = rng.uniform(110, 180) * (1 + 0.1 * np.sin(2 * np.pi * 3 * tt))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            src = sum(np.sin(k * phase) / k for k in range(1, 12))
            f1, f2 = rng.uniform(300, 800), rng.uniform(900, 2200)
            formants = np.sin(2 * np.pi * f1 * tt) * 0.5 + np.sin(2 * np.pi * f2 * tt) * 0.25
            env = np.sin(np.pi * np.arange(i1 - i0) / (i1 - i0)) ** 2
            out[i0:i1] += (0.25 * env * src * (1 + formants)).astype(np.float32)
            t += dur + float(rng.uniform(0.02, 0.06))
        t += float(rng.uniform(0.3, 0.8))  # pause between words
    return np.clip(out, -1, 1)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    path = Path(path)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def cartoon_face(path: str | Path, size: tuple[int, int] = (384, 384), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    bg = tuple(int(c) for c in rng.integers(40, 200, 3))
    skin = tuple(int(c) for c in rng.integers(150, 255, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.2, h * 0.12, w * 0.8, h * 0.9], fill=skin, outline=(40, 30, 30), width=3)
    for ex in (0.38, 0.62):
        d.ellipse([w * (ex - 0.05), h * 0.38, w * (ex + 0.05), h * 0.46], fill=(255, 255, 255))
        d.ellipse([w * (ex - 0.02), h * 0.4, w * (ex + 0.02), h * 0.44], fill=(20, 20, 20))
    d.ellipse([w * 0.42, h * 0.66, w * 0.58, h * 0.74], fill=(150, 40, 50))
    img.save(path)
    return Path(path)
