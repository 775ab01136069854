"""Log-mel audio front end behind the wav2vec2 interface (render/audio_logmel.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from render.media.audio import DecodedAudio
from render.model.audio_features import conv_output_length, load_wav2vec2
from render.model.audio_logmel import LOGMEL_MODEL_TYPE, LogMelConfig, LogMelFeatures, is_logmel_folder
from render.model.checkpoint import W2V_DIR, CheckpointError
from tinymodel.demo_assets import speech_like_audio

W2V_KERNELS, W2V_STRIDES = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]
SR = 16000


@pytest.fixture(scope="module")
def logmel() -> LogMelFeatures:
    return LogMelFeatures(LogMelConfig(num_mel_bins=32))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The tiny model's untrained parts: text encoder + tokenizer and the log-mel config."""
    from tinymodel.export import write_template

    return write_template(tmp_path_factory.mktemp("template"))


@pytest.mark.parametrize("n", [400, 719, 720, 721, 1039, 1040, 16000, 16000 * 3 + 123, 50_001])
def test_frame_count_equals_wav2vec2_conv_arithmetic(logmel, n):
    want = conv_output_length(n, W2V_KERNELS, W2V_STRIDES)
    assert logmel.num_frames_50hz(n) == want
    x = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    h = logmel.hidden_states_50hz(x)
    assert tuple(h.shape) == (25, want, 32)


def test_frame_count_matches_for_every_length_up_to_two_seconds(logmel):
    got = [logmel.num_frames_50hz(n) for n in range(2 * SR)]
    want = [conv_output_length(n, W2V_KERNELS, W2V_STRIDES) for n in range(2 * SR)]
    assert got == want
    assert logmel.hop_samples == 320 and logmel.receptive_field_samples == 400


def test_too_short_audio_is_an_error(logmel):
    with pytest.raises(ValueError, match="audio too short: 399 samples"):
        logmel.hidden_states_50hz(np.zeros(399, np.float32))


def test_25_identical_layers(logmel):
    x = speech_like_audio(2.0, SR, seed=1)
    h = logmel.hidden_states_50hz(x)
    assert logmel.num_layers == 24 and logmel.hidden_size == 32
    assert h.shape[0] == 25 and h.dtype == torch.float32
    for layer in h[1:]:
        assert torch.equal(layer, h[0])
    assert torch.isfinite(h).all() and h[0].std() > 0.1


def test_chunked_equals_whole_and_frames_are_local(logmel):
    x = speech_like_audio(6.0, SR, seed=2)
    whole = logmel.hidden_states_50hz(x)
    assert torch.equal(logmel.hidden_states_50hz(x, chunk_seconds=1.0, context_seconds=0.5), whole)
    assert torch.equal(logmel.features_30fps(x, chunk_seconds=2.0), logmel.features_30fps(x))
    # Locality: the log-mel of a prefix of the normalised waveform is the prefix of the whole's.
    values = logmel.input_values(x)
    full = logmel.logmel(values)
    n = 16000 + 77
    part = logmel.logmel(values[:n])
    assert part.shape[0] == logmel.num_frames_50hz(n)
    torch.testing.assert_close(part, full[: part.shape[0]], rtol=0, atol=1e-5)


def test_30fps_features_match_the_wav2vec2_grid(logmel):
    x = speech_like_audio(3.0, SR, seed=3)
    f = logmel.features_30fps(x)
    t50 = conv_output_length(len(x), W2V_KERNELS, W2V_STRIDES)
    assert tuple(f.shape) == (25, int(t50 / 50.0 * 30), 32)


def _tone(seconds: float, amp: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_loudness_within_an_utterance_orders_log_mel_and_overall_gain_does_not(logmel):
    """The waveform is normalised per utterance (zero mean, unit variance), so scaling a whole
    utterance changes nothing; inside one utterance a louder segment has higher log-mel energy."""
    rng = np.random.default_rng(4)
    x = np.concatenate([_tone(1.0, 0.5), _tone(1.0, 0.05), _tone(1.0, 0.005)])
    x = x + rng.normal(0, 1e-5, len(x)).astype(np.float32)
    feats = logmel.hidden_states_50hz(x)[0]  # [T50, 32]
    per_second = [feats[s * 50 + 2:(s + 1) * 50 - 3].mean().item() for s in range(3)]
    assert per_second[0] > per_second[1] + 0.2 and per_second[1] > per_second[2] + 0.1
    # 20 dB = a factor 100 in power = ln(100) / log_scale in the features, at the tone's bins.
    peak = feats.mean(0).argmax()
    loud, mid = feats[2:47, peak].mean().item(), feats[52:97, peak].mean().item()
    assert loud - mid == pytest.approx(np.log(100.0) / logmel.cfg.log_scale, abs=0.05)
    # The same utterance 20 dB quieter: the same features (a 20 dB change would move the tone's
    # bin by 0.92; the normaliser's variance epsilon leaves ~1e-4 here).
    quiet = logmel.hidden_states_50hz(x * 0.1)
    torch.testing.assert_close(quiet, logmel.hidden_states_50hz(x), rtol=0, atol=2e-3)


def test_load_wav2vec2_dispatches_to_log_mel(template):
    folder = template / W2V_DIR
    assert is_logmel_folder(folder)
    enc = load_wav2vec2(folder)
    assert isinstance(enc, LogMelFeatures)
    assert enc.cfg.num_mel_bins == 32 and enc.num_layers == 24
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == LOGMEL_MODEL_TYPE and cfg["sampling_rate"] == SR
    # Round trip of the written config.
    assert LogMelConfig.from_json(folder / "config.json") == LogMelConfig(num_mel_bins=32)


def _write_cfg(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    d = LogMelConfig().to_json_dict()
    d.update(changes)
    (folder / "config.json").write_text(json.dumps(d))
    return folder


@pytest.mark.parametrize("changes, needle", [
    ({"num_mel_binz": 40}, r"unknown log-mel config keys \['num_mel_binz'\]"),
    ({"num_hidden_layers": 12}, "num_hidden_layers=12"),
    ({"sampling_rate": 22050}, "sampling_rate=22050"),
    ({"n_fft": 256}, "n_fft=256 is smaller than win_length=400"),
])
def test_config_errors_name_the_file_and_key(tmp_path, changes, needle):
    folder = _write_cfg(tmp_path / "w2v", **changes)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_wav2vec2(folder)
    assert str(folder / "config.json") in str(e.value)


def test_other_config_is_not_log_mel(tmp_path):
    assert not is_logmel_folder(tmp_path)  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    assert not is_logmel_folder(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")  # not a dict
    assert not is_logmel_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_logmel_folder(tmp_path)


@pytest.fixture
def one_torch_thread():
    """Small convolutions on 2 busy cores: OpenMP threads spin-waiting for each other made this
    test take 4.5-46 s with 2 threads, 2.3 s with 1 (see tests/tinymodel/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pipeline_loads_a_checkpoint_with_a_log_mel_audio_folder(template, tmp_path, one_torch_thread):
    """The official folder layout with the log-mel front end in the wav2vec2 slot: S2VModels
    loads it and a tiny DiT with audio_dim = num_mel_bins renders a shot from it."""
    from render.media.video import probe_video
    from render.model.components import S2VModels
    from render.settings import RenderSettings
    from render.shot.pipeline import render_shot
    from tinymodel.checkpoint import TINY_DIT, write_tiny_checkpoint
    from tinymodel.demo_assets import cartoon_face, write_wav

    assert TINY_DIT.audio_dim == 32
    # write_tiny_checkpoint only adds the parts a folder lacks: it keeps the log-mel folder.
    shutil.copytree(template / W2V_DIR, tmp_path / "ckpt" / W2V_DIR)
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt")
    assert is_logmel_folder(ckpt / W2V_DIR)
    pipe = S2VModels(ckpt, device="cpu")
    assert isinstance(pipe.wav2vec, LogMelFeatures)
    x = speech_like_audio(2.0, SR, seed=5)
    audio = DecodedAudio(x, SR, len(x) / SR, SR, 1, "pcm_s16le")
    frames = pipe.audio_frames(audio.samples, 40, 16)
    assert tuple(frames.shape) == (1, 25, 32, 40)
    assert frames[0, :, :, 33:].abs().sum() == 0  # past the end of 2 s of audio: zeros
    assert frames[0, 0, :, :30].abs().sum() > 0
    # One clip end to end: the DiT reads the log-mel features.
    wav, image = write_wav(tmp_path / "a.wav", x[:16000]), cartoon_face(tmp_path / "f.png", (64, 64))
    out = tmp_path / "shot.mp4"
    render_shot(pipe, wav, image, "a face talks", out, RenderSettings(size="64*64", steps=1), progress=False)
    assert probe_video(out).frames == 16
