"""wav2vec2 audio features at 30 fps and their per-video-frame buckets (official S2V audio path).

Official behaviour: the 16 kHz mono waveform is normalised to zero mean / unit
variance over the whole utterance, fed once through Wav2Vec2ForCTC (float32, CPU in the official
code) with all hidden states returned; the 25 states (embedding output + 24 layers, the last one
after the encoder's final LayerNorm) at 50 Hz are linearly interpolated (align_corners=True) to
``int(T50 / 50 * 30)`` frames at 30 fps. Each 16 fps video frame then picks one 30 fps frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from render.model.audio_frames import AUDIO_FPS, as_mono_numpy, interpolate_to_30fps
from render.model.checkpoint import CheckpointError

if TYPE_CHECKING:
    from render.model.audio_logmel import LogMelFeatures

# Rates fixed by the official pipeline.
W2V_SAMPLE_RATE = 16000
_W2V_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def conv_output_length(num_samples: int, kernels: list[int], strides: list[int]) -> int:
    """Frames the wav2vec2 conv feature encoder makes from ``num_samples`` (no padding)."""
    n = num_samples
    for k, s in zip(kernels, strides):
        n = (n - k) // s + 1 if n >= k else 0
    return n


@dataclass
class Wav2Vec2Features:
    """A loaded wav2vec2 (Wav2Vec2ForCTC weights) + its feature extractor."""

    model: torch.nn.Module  # Wav2Vec2ForCTC, eval mode
    feature_extractor: object  # transformers Wav2Vec2FeatureExtractor
    device: torch.device
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def hop_samples(self) -> int:
        return int(np.prod(self.model.config.conv_stride))

    @property
    def receptive_field_samples(self) -> int:
        # Receptive field of the conv stack: r = k_last, then r = (r - 1) * s + k going down.
        r = 1
        for k, s in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            r = (r - 1) * s + k
        return r

    def num_frames_50hz(self, num_samples: int) -> int:
        cfg = self.model.config
        return conv_output_length(num_samples, list(cfg.conv_kernel), list(cfg.conv_stride))

    def input_values(self, samples_16k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Feature-extractor output [N] float32: per-utterance zero mean / unit variance."""
        x = as_mono_numpy(samples_16k)
        out = self.feature_extractor(x, sampling_rate=W2V_SAMPLE_RATE, return_tensors="pt")
        return out.input_values[0].to(torch.float32)

    @torch.no_grad()
    def _run(self, input_values: torch.Tensor) -> torch.Tensor:
        """Normalised input [N] -> all hidden states [L+1, T50, C] float32."""
        x = input_values.to(self.device, self.dtype)[None]
        # Call the base Wav2Vec2Model: the CTC head is not used. transformers 4.x returns the
        # last hidden state *after* the encoder's final LayerNorm inside `hidden_states`, 5.x
        # returns the raw last layer there; the official features (made with 4.x) use the
        # normalised one, which both versions return as `last_hidden_state`.
        out = self.model.wav2vec2(x, output_hidden_states=True, return_dict=True)
        states = out.hidden_states
        if states is None or len(states) != self.num_layers + 1:
            got = "none" if states is None else len(states)
            raise RuntimeError(
                f"wav2vec2 returned {got} hidden states, expected num_hidden_layers + 1 = {self.num_layers + 1}"
            )
        layers = [*states[:-1], out.last_hidden_state]
        return torch.cat(layers, dim=0).to(torch.float32)

    def hidden_states_50hz(
        self,
        samples_16k: np.ndarray | torch.Tensor,
        chunk_seconds: float | None = None,
        context_seconds: float = 5.0,
    ) -> torch.Tensor:
        """All hidden states at 50 Hz, [num_layers + 1, T50, hidden] float32.

        Default: the whole utterance in one forward pass, exactly as the official code.
        ``chunk_seconds`` bounds memory for very long audio: the utterance is still normalised
        as a whole, but the transformer sees windows of ``chunk_seconds`` plus
        ``context_seconds`` on each side, and only each window's centre frames are kept. Frame
        positions are identical (windows start on the 320-sample hop grid), but values differ
        from the whole-utterance run because attention and the positional conv see less
        context: NOT bit-identical with the official features.
        """
        values = self.input_values(samples_16k)
        n = values.shape[0]
        total = self.num_frames_50hz(n)
        if total < 1:
            raise ValueError(
                f"audio too short: {n} samples at {W2V_SAMPLE_RATE} Hz give no wav2vec2 frame "
                f"(need at least {self.receptive_field_samples} samples)"
            )
        if chunk_seconds is None:
            return self._run(values)
        if chunk_seconds <= 0 or context_seconds < 0:
            raise ValueError(
                f"chunk_seconds must be > 0 and context_seconds >= 0, got {chunk_seconds!r}, {context_seconds!r}"
            )
        frame_rate = W2V_SAMPLE_RATE / self.hop_samples
        chunk = max(1, int(round(chunk_seconds * frame_rate)))
        context = int(round(context_seconds * frame_rate))
        hop, field = self.hop_samples, self.receptive_field_samples
        pieces = []
        for f0 in range(0, total, chunk):
            f1 = min(total, f0 + chunk)
            w0, w1 = max(0, f0 - context), min(total, f1 + context)
            # Window frames w0..w1-1 need samples [w0*hop, (w1-1)*hop + field).
            window = values[w0 * hop : (w1 - 1) * hop + field]
            states = self._run(window)
            if states.shape[1] != w1 - w0:  # the window/frame arithmetic above is wrong
                raise RuntimeError(
                    f"chunk window {w0}:{w1} gave {states.shape[1]} frames, expected {w1 - w0}"
                )
            pieces.append(states[:, f0 - w0 : f1 - w0])
        return torch.cat(pieces, dim=1)

    def features_30fps(
        self,
        samples_16k: np.ndarray | torch.Tensor,
        chunk_seconds: float | None = None,
        context_seconds: float = 5.0,
    ) -> torch.Tensor:
        """[num_layers + 1, A, hidden] float32 features at 30 fps (see ``hidden_states_50hz``)."""
        hidden = self.hidden_states_50hz(samples_16k, chunk_seconds, context_seconds)
        return interpolate_to_30fps(hidden, input_fps=int(round(W2V_SAMPLE_RATE / self.hop_samples)))


def load_wav2vec2(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Wav2Vec2Features | LogMelFeatures:
    """Load ``Wav2Vec2ForCTC`` + ``Wav2Vec2FeatureExtractor`` from a local folder (no downloads).

    The official checkpoint keeps it in ``<ckpt_dir>/wav2vec2-large-xlsr-53-english/`` and runs
    it on CPU in float32; other devices/dtypes are allowed but leave exact parity.
    """
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from render.model.audio_logmel import is_logmel_folder, load_logmel

    folder = Path(folder)
    if folder.is_dir() and is_logmel_folder(folder):
        # A tiny trained model's log-mel front end in the audio encoder's slot (render/audio_logmel.py).
        return load_logmel(folder, device, dtype)
    if not folder.is_dir():
        raise CheckpointError(
            f"wav2vec2 folder {str(folder)!r} does not exist; expected the checkpoint's "
            "'wav2vec2-large-xlsr-53-english/' folder (config.json, preprocessor_config.json, model weights)"
        )
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
    if not any((folder / w).is_file() for w in _W2V_WEIGHT_FILES):
        missing.append(" or ".join(_W2V_WEIGHT_FILES))
    if missing:
        raise CheckpointError(f"wav2vec2 folder {str(folder)!r} is missing: {', '.join(missing)}")
    try:
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        # transformers loads .bin weights with torch.load(weights_only=True); safetensors preferred.
        model = Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not load wav2vec2 from {str(folder)!r}: {e}") from e
    if not getattr(extractor, "do_normalize", False):
        # The official features depend on per-utterance normalisation; a config without it
        # would silently change every feature.
        raise CheckpointError(
            f"{str(folder / 'preprocessor_config.json')!r} has do_normalize={extractor.do_normalize!r}; expected true"
        )
    if int(extractor.sampling_rate) != W2V_SAMPLE_RATE:
        raise CheckpointError(
            f"{str(folder / 'preprocessor_config.json')!r} has sampling_rate={extractor.sampling_rate}; "
            f"expected {W2V_SAMPLE_RATE}"
        )
    device = torch.device(device)
    model = model.to(device).eval()
    return Wav2Vec2Features(model=model, feature_extractor=extractor, device=device, dtype=dtype)


def num_repeats(num_audio_frames: int, infer_frames: int, fps: int = 16) -> int:
    """Number of clips: int(A / (infer_frames * 30 / fps)) + 1 (official; note the +1)."""
    return int(num_audio_frames / (infer_frames * (AUDIO_FPS / fps))) + 1


def bucket_indices(num_audio_frames_30fps: int, num_video_frames: int, fps: int = 16) -> np.ndarray:
    """The 30 fps frame index each video frame takes, int64 [num_video_frames].

    Video frame i sits at time i * (V / fps) / V and takes the nearest 30 fps frame, numpy
    half-to-even rounding (i = 4 -> 7.5 -> 8, i = 12 -> 22.5 -> 22 at 16 fps), clipped to the
    padded audio length ceil(V / fps * 30). Indices >= num_audio_frames_30fps mean silence.
    """
    a, v = int(num_audio_frames_30fps), int(num_video_frames)
    if a < 0 or v < 0 or fps <= 0:
        raise ValueError(f"bucket_indices: need A >= 0, V >= 0, fps > 0; got A={a}, V={v}, fps={fps}")
    if v == 0:
        return np.zeros(0, np.int64)
    duration = v / fps
    # Same float steps as sampling V evenly spaced times over [0, duration) and scaling by 30.
    times = np.arange(v, dtype=np.float64) * (duration / v)
    idx = np.round(times * AUDIO_FPS).astype(np.int64)
    padded_len = math.ceil(duration * AUDIO_FPS)
    return np.clip(idx, 0, padded_len - 1)


def bucket_features(feats: torch.Tensor, infer_frames: int = 80, fps: int = 16) -> tuple[torch.Tensor, int]:
    """[L, A, C] 30 fps features -> ([1, L, C, V] per-video-frame features, num_repeat).

    V = num_repeat * infer_frames covers the audio plus silent (zero) frames up to a whole
    number of clips; clip r uses video frames [r * infer_frames, (r + 1) * infer_frames).
    """
    if feats.ndim != 3:
        raise ValueError(f"expected features [layers, frames, channels], got shape {tuple(feats.shape)}")
    if infer_frames <= 0:
        raise ValueError(f"infer_frames must be positive, got {infer_frames}")
    layers, a, channels = feats.shape
    repeat = num_repeats(a, infer_frames, fps)
    v = repeat * infer_frames
    idx = torch.from_numpy(bucket_indices(a, v, fps)).to(feats.device)
    valid = idx < a
    out = feats.new_zeros(layers, v, channels)
    out[:, valid] = feats[:, idx[valid]]
    return out.permute(0, 2, 1).unsqueeze(0).contiguous(), repeat


def frame_features(encoder, samples_16k: np.ndarray | torch.Tensor, num_video_frames: int,
                   fps: int = 16) -> torch.Tensor:
    """[1, L, C, num_video_frames] features per video frame (zeros past the end of the audio), from
    a wav2vec2 or log-mel ``encoder``: the conditioning the DiT's audio encoder reads."""
    feats = encoder.features_30fps(samples_16k)  # [L, A, C]
    idx = torch.from_numpy(bucket_indices(feats.shape[1], num_video_frames, fps))
    padded = torch.cat([feats, feats.new_zeros(feats.shape[0], 1, feats.shape[2])], dim=1)
    idx = torch.where(idx < feats.shape[1], idx, torch.full_like(idx, feats.shape[1]))
    return padded[:, idx].permute(0, 2, 1)[None].contiguous()


__all__ = [
    "AUDIO_FPS",
    "W2V_SAMPLE_RATE",
    "Wav2Vec2Features",
    "bucket_features",
    "bucket_indices",
    "conv_output_length",
    "frame_features",
    "interpolate_to_30fps",
    "load_wav2vec2",
    "num_repeats",
]
