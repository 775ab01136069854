"""Speech for training and the demo: espeak-ng sentences and a procedural syllable synthesiser.

``build_corpus`` (run on a machine with Debian's ``espeak-ng``) speaks random sentences in varied
voices, speeds and pitches and stores them 16 kHz mu-law in one ``.npz``; the training script
reads that file on GPU machines that have no espeak. Sentences are split into training and
held-out sets by index, and the procedural voice (``tinymodel.demo_assets.speech_like_audio``) by
seed, so the lip-sync test uses audio the model never heard.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
HELD_OUT_EVERY = 10  # sentence i is held out when i % HELD_OUT_EVERY == 0
SYNTH_HELD_OUT_SEED = 1_000_000  # procedural voices with seeds >= this are never used in training

_WORDS = """the a one two three we you they she he it this that here there now then today tomorrow
morning evening night light dark sun moon river mountain city street house window door garden table
chair coffee water bread music song story picture camera movie actor studio voice sound word letter
friend family mother father sister brother teacher doctor driver painter singer dancer walk run talk
sing dance listen look open close start stop begin finish remember forget believe understand explain
wonder answer question simple quiet loud bright slow quick happy tired ready early late always never
often sometimes maybe really very quite almost together alone again before after under over across
between because although while until unless so and but or if when where why how what who which
beautiful wonderful strange important different little big small long short warm cold green blue
red yellow golden silver paper stone glass wooden journey adventure holiday weekend station airport
""".split()
_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt"]


def random_sentence(rng: np.random.Generator) -> str:
    words = [str(rng.choice(_WORDS)) for _ in range(int(rng.integers(4, 14)))]
    s = " ".join(words)
    return s[0].upper() + s[1:] + str(rng.choice([".", ".", "?", "!"]))


def espeak(text: str, voice: str = "en", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with espeak-ng; float32 mono at 16 kHz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    from render.media.audio import decode_audio

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True, capture_output=True)
        return decode_audio(wav).samples.astype(np.float32)


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, -1, 1)
    y = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    return np.round((y + 1) * 127.5).astype(np.uint8)


def mulaw_decode(q: np.ndarray) -> np.ndarray:
    y = q.astype(np.float32) / 127.5 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(255)) / 255).astype(np.float32)


def build_corpus(out: str | Path, num_sentences: int = 300, seed: int = 0) -> Path:
    """Speak ``num_sentences`` random sentences; store mu-law audio + offsets in ``out`` (.npz)."""
    rng = np.random.default_rng(seed)
    pieces, texts = [], []
    for _ in range(num_sentences):
        text = random_sentence(rng)
        voice = str(rng.choice(_VOICES)) + str(rng.choice(_VARIANTS))
        x = espeak(text, voice, int(rng.integers(120, 200)), int(rng.integers(25, 80)))
        x = x / max(1e-4, float(np.abs(x).max())) * 0.9
        pieces.append(x)
        texts.append(f"{voice}|{text}")
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype(np.int64)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, audio=mulaw_encode(np.concatenate(pieces)), offsets=offsets, texts=np.array(texts))
    return out


class Corpus:
    """Sentences of a corpus file, split into training and held-out sets."""

    def __init__(self, path: str | Path):
        z = np.load(path)
        self.audio = mulaw_decode(z["audio"])
        self.offsets = z["offsets"]
        self.texts = [str(t) for t in z["texts"]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sentence(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i]:self.offsets[i + 1]]

    def indices(self, held_out: bool) -> list[int]:
        return [i for i in range(len(self)) if (i % HELD_OUT_EVERY == 0) == held_out]


def speech_track(rng: np.random.Generator, seconds: float, corpus: Corpus | None, held_out: bool = False,
                 synth_fraction: float = 0.3) -> np.ndarray:
    """``seconds`` of speech: corpus sentences (or procedural words) separated by pauses, at a
    random level, starting after a short random silence."""
    from tinymodel.demo_assets import speech_like_audio

    n = int(round(seconds * SAMPLE_RATE))
    if corpus is None or rng.random() < synth_fraction:
        seed = int(rng.integers(0, SYNTH_HELD_OUT_SEED))
        if held_out:
            seed += SYNTH_HELD_OUT_SEED
        x = speech_like_audio(seconds, SAMPLE_RATE, seed)
    else:
        pool = corpus.indices(held_out)
        x = np.zeros(n, np.float32)
        t = int(rng.uniform(0.0, 0.6) * SAMPLE_RATE)
        while t < n:
            s = corpus.sentence(int(rng.choice(pool)))
            m = min(len(s), n - t)
            x[t:t + m] = s[:m]
            t += m + int(rng.uniform(0.15, 1.2) * SAMPLE_RATE)
    gain = 10 ** (rng.uniform(-12, 0) / 20)
    noise = rng.normal(0, 10 ** (rng.uniform(-70, -45) / 20), n).astype(np.float32)
    return (x * gain + noise).astype(np.float32)


DEMO_TEXT = (
    "Hello, and welcome to the tiny talking picture show. Every face you see here was drawn by a "
    "small program, and every word you hear was spoken by a speech synthesiser. Watch the mouth: it "
    "opens when the voice is loud, and it closes in the pauses. Thank you for watching, and goodbye!"
)


def write_demo_speech(out: str | Path, voice: str = "en-us+m3", speed: int = 144) -> Path:
    """The demo's bundled speech (needs espeak-ng): DEMO_TEXT as 16 kHz mono Opus in Ogg."""
    import av

    x = espeak(DEMO_TEXT, voice, speed, 50)
    x = (x / max(1e-4, float(np.abs(x).max())) * 0.9).astype(np.float32)
    out = Path(out)
    with av.open(str(out), "w", format="ogg") as c:
        s = c.add_stream("libopus", rate=48000)
        s.bit_rate = 32000
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for f in resampler.resample(frame) + resampler.resample(None):
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return out
