"""wav2vec2 features, 30 fps interpolation and bucketing against the official audio goldens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from render.model.audio_features import (
    Wav2Vec2Features,
    bucket_features,
    bucket_indices,
    conv_output_length,
    interpolate_to_30fps,
    load_wav2vec2,
    num_repeats,
)
from render.model.checkpoint import CheckpointError

TOL = 1e-4


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(golden_dir / "audio_sampler_golden.safetensors"))


@pytest.fixture(scope="module")
def golden_meta(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "audio_sampler_golden.json").read_text())["meta"]


@pytest.fixture(scope="module")
def w2v(golden_dir: Path) -> Wav2Vec2Features:
    return load_wav2vec2(golden_dir / "tiny_wav2vec2")


def _max_abs(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float((got.float() - want.float()).abs().max())
    print(f"{name}: shape {tuple(got.shape)} max-abs {err:.3e}")
    return err


def test_input_values(w2v: Wav2Vec2Features, golden: dict) -> None:
    got = w2v.input_values(golden["audio_waveform_16k"].numpy())
    assert got.dtype == torch.float32
    assert _max_abs("input_values", got, golden["audio_input_values"]) <= TOL
    # Accepts a torch tensor too.
    assert _max_abs("input_values(tensor)", w2v.input_values(golden["audio_waveform_16k"]), got) == 0


def test_hidden_states_50hz(w2v: Wav2Vec2Features, golden: dict) -> None:
    got = w2v.hidden_states_50hz(golden["audio_waveform_16k"].numpy())
    want = golden["audio_w2v_hidden_states_50fps"]
    assert got.dtype == torch.float32
    assert _max_abs("hidden_states_50hz (25 states)", got, want) <= TOL
    # The last state is the one after the encoder's final LayerNorm (transformers 5 returns the
    # raw last layer in hidden_states; make sure we did not pick that one).
    assert _max_abs("last state", got[-1], want[-1]) <= TOL
    assert w2v.num_frames_50hz(27200) == want.shape[1] == 84


def test_interpolation_to_30fps(w2v: Wav2Vec2Features, golden: dict) -> None:
    # The interpolation alone, on the golden 50 Hz states...
    alone = interpolate_to_30fps(golden["audio_w2v_hidden_states_50fps"])
    assert _max_abs("interpolate_to_30fps(golden states)", alone, golden["audio_feat_30fps"]) <= TOL
    # ... and end to end from the waveform.
    got = w2v.features_30fps(golden["audio_waveform_16k"].numpy())
    assert got.dtype == torch.float32
    assert _max_abs("features_30fps (end to end)", got, golden["audio_feat_30fps"]) <= TOL


def test_interpolation_lengths_and_endpoints() -> None:
    for t50 in (2, 5, 15, 84, 101, 250):
        x = torch.randn(3, t50, 4)
        y = interpolate_to_30fps(x)
        assert y.shape == (3, int(t50 / 50.0 * 30), 4)
        if y.shape[1] > 1:  # align_corners=True keeps both end frames exactly
            torch.testing.assert_close(y[:, 0], x[:, 0])
            torch.testing.assert_close(y[:, -1], x[:, -1])
    with pytest.raises(ValueError, match="too short"):
        interpolate_to_30fps(torch.zeros(25, 1, 8))


@pytest.mark.parametrize("infer_frames", [80, 48, 12])
def test_bucket_features(w2v: Wav2Vec2Features, golden: dict, golden_meta: dict, infer_frames: int) -> None:
    want = golden[f"audio_bucket_infer{infer_frames}"]
    got, repeat = bucket_features(golden["audio_feat_30fps"], infer_frames=infer_frames, fps=16)
    assert repeat == golden_meta[f"audio_num_repeat_infer{infer_frames}"]
    assert got.shape == (1, 25, 32, repeat * infer_frames)
    assert _max_abs(f"bucket infer{infer_frames} (golden feats)", got, want) <= TOL
    feats = w2v.features_30fps(golden["audio_waveform_16k"].numpy())
    got2, _ = bucket_features(feats, infer_frames=infer_frames)
    assert _max_abs(f"bucket infer{infer_frames} (end to end)", got2, want) <= TOL


@pytest.mark.parametrize("num_audio_frames", [149, 150, 300, 301])
def test_bucket_indices(golden: dict, golden_meta: dict, num_audio_frames: int) -> None:
    repeat = num_repeats(num_audio_frames, infer_frames=80, fps=16)
    assert repeat == golden_meta[f"audio_num_repeat_A{num_audio_frames}"]
    got = bucket_indices(num_audio_frames, repeat * 80, fps=16)
    want = golden[f"audio_bucket_index_A{num_audio_frames}"].numpy()
    assert got.dtype == np.int64
    print(f"A={num_audio_frames}: num_repeat {repeat}, {got.size} indices, last {got[-3:]}")
    np.testing.assert_array_equal(got, want)


def test_bucket_rule_details() -> None:
    idx = bucket_indices(1000, 32, fps=16)
    # numpy half-to-even: 4 * 30/16 = 7.5 -> 8, 12 * 30/16 = 22.5 -> 22.
    assert idx[4] == 8 and idx[12] == 22
    assert idx[1] == 2 and idx[5] == 9
    # A = 150 at infer 80 (exactly 5 s) gives a second, silent clip.
    assert num_repeats(150, 80) == 2 and num_repeats(149, 80) == 1
    assert bucket_indices(10, 0).shape == (0,)


def test_bucket_zero_past_end_on_other_shapes() -> None:
    torch.manual_seed(0)
    feats = torch.randn(3, 20, 5) + 10  # no zeros in real frames
    out, repeat = bucket_features(feats, infer_frames=8, fps=16)
    assert repeat == int(20 / (8 * 30 / 16)) + 1 == 2
    assert out.shape == (1, 3, 5, 16)
    idx = bucket_indices(20, 16)
    for i, j in enumerate(idx):
        if j < 20:
            torch.testing.assert_close(out[0, :, :, i], feats[:, j])
        else:
            assert torch.all(out[0, :, :, i] == 0)
    assert (idx >= 20).any()  # this shape does exercise silence
    with pytest.raises(ValueError, match="layers, frames, channels"):
        bucket_features(torch.zeros(20, 5))


def test_chunked_mode(w2v: Wav2Vec2Features, golden: dict) -> None:
    x = golden["audio_waveform_16k"].numpy()
    whole = w2v.hidden_states_50hz(x)
    # Context wider than the clip: every window is the whole utterance -> same numbers.
    wide = w2v.hidden_states_50hz(x, chunk_seconds=0.5, context_seconds=10.0)
    assert _max_abs("chunked, full context", wide, whole) <= TOL
    # Narrow context: same frame grid, different values (documented as not bit-identical).
    narrow = w2v.features_30fps(x, chunk_seconds=0.4, context_seconds=0.2)
    assert narrow.shape == golden["audio_feat_30fps"].shape
    assert torch.isfinite(narrow).all()
    # The conv front end is local, so frames do line up: state 0 (before attention, only the
    # positional conv differs near window edges) stays correlated with the whole-utterance one.
    a = w2v.hidden_states_50hz(x, chunk_seconds=0.4, context_seconds=0.2)[0].flatten()
    b = whole[0].flatten()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    print(f"chunked (0.4 s + 0.2 s context) state-0 correlation with whole utterance: {corr:.4f}")
    assert corr > 0.9
    with pytest.raises(ValueError, match="chunk_seconds"):
        w2v.hidden_states_50hz(x, chunk_seconds=0)


def test_too_short_and_bad_input(w2v: Wav2Vec2Features) -> None:
    with pytest.raises(ValueError, match="too short"):
        w2v.features_30fps(np.zeros(300, np.float32))
    with pytest.raises(ValueError, match="too short"):
        w2v.features_30fps(np.zeros(500, np.float32))  # 1 frame at 50 Hz -> 0 at 30 fps
    with pytest.raises(ValueError, match="mono"):
        w2v.features_30fps(np.zeros((2, 16000), np.float32))
    assert conv_output_length(400, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]) == 1
    assert w2v.hop_samples == 320 and w2v.receptive_field_samples == 400


def test_load_errors(golden_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_wav2vec2(tmp_path / "wav2vec2-large-xlsr-53-english")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(golden_dir / "tiny_wav2vec2" / "config.json", partial / "config.json")
    with pytest.raises(CheckpointError, match="preprocessor_config.json") as e:
        load_wav2vec2(partial)
    assert "model.safetensors" in str(e.value)
