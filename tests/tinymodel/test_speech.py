"""Speech for the tiny model: mu-law storage, the corpus and its held-out split, speech tracks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tinymodel.demo_assets
from tinymodel.speech import (
    HELD_OUT_EVERY,
    SAMPLE_RATE,
    SYNTH_HELD_OUT_SEED,
    Corpus,
    build_corpus,
    mulaw_decode,
    mulaw_encode,
    random_sentence,
    speech_track,
)


def test_mulaw_round_trip():
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(mulaw_encode(mulaw_decode(codes)), codes)
    x = np.linspace(-1, 1, 20001).astype(np.float32)
    y = mulaw_decode(mulaw_encode(x))
    assert y.dtype == np.float32
    # 8-bit mu-law: error grows with level, about 3 % of the value at most (plus a tiny floor).
    assert np.all(np.abs(y - x) <= 0.035 * np.abs(x) + 2e-4)
    assert mulaw_decode(mulaw_encode(np.array([0.0])))[0] == pytest.approx(0.0, abs=1e-4)
    np.testing.assert_array_equal(mulaw_encode(np.array([-3.0, 3.0])), [0, 255])  # clipped


def _fake_corpus(path, n: int = 25):
    """Sentence i is i + 1 hundred samples of the constant level 0.01 * (i + 1)."""
    pieces = [np.full(100 * (i + 1), 0.01 * (i + 1), np.float32) for i in range(n)]
    offsets = np.cumsum([0] + [len(p) for p in pieces]).astype(np.int64)
    texts = np.array([f"en|sentence {i}" for i in range(n)])
    np.savez_compressed(path, audio=mulaw_encode(np.concatenate(pieces)), offsets=offsets, texts=texts)
    return path


def test_corpus_sentences_and_held_out_split(tmp_path):
    c = Corpus(_fake_corpus(tmp_path / "c.npz"))
    assert len(c) == 25 and c.texts[3] == "en|sentence 3"
    for i in (0, 7, 24):
        s = c.sentence(i)
        assert len(s) == 100 * (i + 1)
        np.testing.assert_allclose(s, 0.01 * (i + 1), rtol=0.04)
    held, train = c.indices(True), c.indices(False)
    assert held == [0, 10, 20] and HELD_OUT_EVERY == 10
    assert sorted(held + train) == list(range(25)) and not set(held) & set(train)


def test_speech_track_length_and_seeds():
    for seconds in (0.5, 2.0, 3.3):
        x = speech_track(np.random.default_rng(0), seconds, None)
        assert x.dtype == np.float32 and x.shape == (int(round(seconds * SAMPLE_RATE)),)
    a = speech_track(np.random.default_rng(1), 2.0, None)
    b = speech_track(np.random.default_rng(1), 2.0, None)
    c = speech_track(np.random.default_rng(2), 2.0, None)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.abs(a).max() > 0.01  # speech, not just the noise floor


def test_speech_track_keeps_held_out_voices_and_sentences_apart(tmp_path, monkeypatch):
    seeds = []
    real = tinymodel.demo_assets.speech_like_audio
    monkeypatch.setattr(tinymodel.demo_assets, "speech_like_audio",
                        lambda s, sr=16000, seed=0: seeds.append(seed) or real(s, sr, seed))
    for i in range(20):
        speech_track(np.random.default_rng(i), 0.5, None, held_out=False)
        speech_track(np.random.default_rng(i), 0.5, None, held_out=True)
    assert all(s < SYNTH_HELD_OUT_SEED for s in seeds[0::2])
    assert all(s >= SYNTH_HELD_OUT_SEED for s in seeds[1::2])

    corpus = Corpus(_fake_corpus(tmp_path / "c.npz"))
    used = []
    sentence = corpus.sentence
    corpus.sentence = lambda i: used.append(i) or sentence(i)
    for i in range(10):
        speech_track(np.random.default_rng(i), 2.0, corpus, held_out=True, synth_fraction=0.0)
    assert used and set(used) <= {0, 10, 20}
    used.clear()
    for i in range(10):
        speech_track(np.random.default_rng(i), 2.0, corpus, held_out=False, synth_fraction=0.0)
    assert used and not set(used) & {0, 10, 20}


def test_random_sentence():
    s = random_sentence(np.random.default_rng(0))
    assert s[0].isupper() and s[-1] in ".?!" and 4 <= len(s.split()) <= 13


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_build_corpus_with_espeak(tmp_path):
    path = build_corpus(tmp_path / "sub" / "corpus.npz", num_sentences=3, seed=5)
    c = Corpus(path)
    assert len(c) == 3
    for i in range(3):
        voice, text = c.texts[i].split("|", 1)
        assert voice.startswith("en") and text[-1] in ".?!"
        s = c.sentence(i)
        assert len(s) > 0.3 * SAMPLE_RATE  # 4+ words
        assert np.abs(s).max() == pytest.approx(0.9, abs=0.04)  # peak-normalised, mu-law rounded
    assert c.indices(True) == [0]
