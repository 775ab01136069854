"""A log-mel audio front end behind the wav2vec2 interface (used by the tiny trained model).

The 14B release conditions on 25 wav2vec2 hidden states. A tiny model trained from scratch on a
GPU in minutes has no pretrained speech encoder to lean on, so its checkpoint folder may instead
hold a ``config.json`` with ``"model_type": "s2v_logmel"`` in the audio encoder's slot
(``wav2vec2-large-xlsr-53-english/``). :func:`render.model.audio_features.load_wav2vec2` then returns a
:class:`LogMelFeatures`, which has the same methods and output shapes as the wav2vec2 wrapper:
frames on the same 50 Hz grid (400-sample window, 320-sample hop, no padding), the same
per-utterance normalisation and the same 30 fps interpolation, and ``num_layers + 1`` identical
copies of the log-mel frame where wav2vec2 has its hidden states (the DiT's causal audio encoder
takes a learned mix of exactly 25 of them). Log-mel frames are local, so chunked and
whole-utterance features are identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from render.model.audio_frames import as_mono_numpy, interpolate_to_30fps
from render.model.checkpoint import CheckpointError

LOGMEL_MODEL_TYPE = "s2v_logmel"
_SAMPLE_RATE = 16000


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, [n_fft // 2 + 1, n_mels], each normalised to unit area
    (so bands of different widths give comparable energies)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[:, m] = np.clip(np.minimum(up, down), 0.0, None)
        area = fb[:, m].sum()
        if area > 0:
            fb[:, m] /= area
    return torch.from_numpy(fb).to(torch.float32)


@dataclass
class LogMelConfig:
    num_mel_bins: int = 32
    num_hidden_layers: int = 24  # copies returned = num_hidden_layers + 1 (the DiT needs 25)
    win_length: int = 400  # = wav2vec2's receptive field, so frame counts agree
    hop_length: int = 320  # = wav2vec2's total conv stride (50 Hz at 16 kHz)
    n_fft: int = 512
    f_min: float = 60.0
    f_max: float = 7600.0
    log_offset: float = 5.0  # features = (ln(mel power + 1e-6) + offset) / scale
    log_scale: float = 5.0

    @staticmethod
    def from_json(path: Path) -> LogMelConfig:
        raw = json.loads(path.read_text())
        known = {f for f in LogMelConfig.__dataclass_fields__}
        unknown = sorted(set(raw) - known - {"model_type", "sampling_rate"})
        if unknown:
            raise CheckpointError(f"{path}: unknown log-mel config keys {unknown}; known: {sorted(known)}")
        if int(raw.get("sampling_rate", _SAMPLE_RATE)) != _SAMPLE_RATE:
            raise CheckpointError(f"{path}: sampling_rate={raw['sampling_rate']}, expected {_SAMPLE_RATE}")
        cfg = LogMelConfig(**{k: v for k, v in raw.items() if k in known})
        if cfg.num_hidden_layers + 1 != 25:
            raise CheckpointError(f"{path}: num_hidden_layers={cfg.num_hidden_layers}; the S2V audio encoder "
                                  "mixes exactly 25 feature layers, so it must be 24")
        if cfg.n_fft < cfg.win_length:
            raise CheckpointError(f"{path}: n_fft={cfg.n_fft} is smaller than win_length={cfg.win_length}")
        return cfg

    def to_json_dict(self) -> dict:
        d = {"model_type": LOGMEL_MODEL_TYPE, "sampling_rate": _SAMPLE_RATE}
        d.update({k: getattr(self, k) for k in self.__dataclass_fields__})
        return d


class LogMelFeatures:
    """Same interface as :class:`render.model.audio_features.Wav2Vec2Features`."""

    def __init__(self, cfg: LogMelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self._fb = mel_filterbank(cfg.n_fft, cfg.num_mel_bins, _SAMPLE_RATE, cfg.f_min, cfg.f_max)
        self._window = torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float64).to(torch.float32)

    @property
    def num_layers(self) -> int:
        return self.cfg.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.cfg.num_mel_bins

    @property
    def hop_samples(self) -> int:
        return self.cfg.hop_length

    @property
    def receptive_field_samples(self) -> int:
        return self.cfg.win_length

    def num_frames_50hz(self, num_samples: int) -> int:
        w, h = self.cfg.win_length, self.cfg.hop_length
        return (num_samples - w) // h + 1 if num_samples >= w else 0

    def input_values(self, samples_16k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Zero mean / unit variance over the utterance (as Wav2Vec2FeatureExtractor does)."""

        x = torch.from_numpy(as_mono_numpy(samples_16k).astype(np.float64))
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        return x.to(torch.float32)

    def logmel(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised waveform [N] -> features [T50, num_mel_bins] float32."""
        c = self.cfg
        if values.shape[0] < c.win_length:
            return values.new_zeros(0, c.num_mel_bins)
        frames = values.float().unfold(0, c.win_length, c.hop_length) * self._window
        power = torch.fft.rfft(frames, n=c.n_fft).abs().pow(2)
        mel = power @ self._fb
        return (torch.log(mel + 1e-6) + c.log_offset) / c.log_scale

    def hidden_states_50hz(self, samples_16k: np.ndarray | torch.Tensor, chunk_seconds: float | None = None,
                           context_seconds: float = 5.0) -> torch.Tensor:
        """[num_layers + 1, T50, num_mel_bins]; chunking arguments are accepted for interface
        compatibility and change nothing (every frame sees only its own window)."""
        values = self.input_values(samples_16k)
        if self.num_frames_50hz(values.shape[0]) < 1:
            raise ValueError(
                f"audio too short: {values.shape[0]} samples at {_SAMPLE_RATE} Hz give no feature frame "
                f"(need at least {self.receptive_field_samples} samples)"
            )
        feat = self.logmel(values)
        return feat[None].expand(self.num_layers + 1, -1, -1).to(self.device, self.dtype).contiguous()

    def features_30fps(self, samples_16k: np.ndarray | torch.Tensor, chunk_seconds: float | None = None,
                       context_seconds: float = 5.0) -> torch.Tensor:

        hidden = self.hidden_states_50hz(samples_16k, chunk_seconds, context_seconds)
        return interpolate_to_30fps(hidden, input_fps=int(round(_SAMPLE_RATE / self.hop_samples)))


def is_logmel_folder(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == LOGMEL_MODEL_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def load_logmel(folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LogMelFeatures:
    return LogMelFeatures(LogMelConfig.from_json(folder / "config.json"), device, dtype)
