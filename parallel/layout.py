"""How one sample's token sequence is split over the sequence-parallel ranks.

The DiT sequence is ``N = F x T`` noisy tokens (F latent frames of T tokens each) followed by
``E`` reference/motion tokens. Rank ``p`` of ``P`` holds

    [its own whole latent frames f0..f1 (noisy)] [a run of the extra tokens] [padding]

* Noisy tokens are split on latent-frame boundaries, so the per-frame audio injection of a
  rank needs only its own frames and its own audio tokens: no gather of the sequence.
* The extra tokens fill the ranks up to the common length ``S`` (water-filling), so ranks with
  fewer frames take more of them and the work stays balanced.
* Every rank holds exactly ``S`` tokens (the all-to-all needs equal chunks); the padding is
  excluded from attention as keys (see :class:`KeyPlan`) and discarded as queries.

Self-attention does not depend on the order of the keys, and each token carries its own RoPE
angles and modulation variant, so this reordering is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RankSlice:
    frame_start: int
    frame_end: int
    extra_start: int
    extra_end: int
    tokens_per_frame: int

    @property
    def frames(self) -> int:
        return self.frame_end - self.frame_start

    @property
    def num_noisy(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_extra(self) -> int:
        return self.extra_end - self.extra_start

    @property
    def num_valid(self) -> int:
        return self.num_noisy + self.num_extra


@dataclass(frozen=True)
class ShardLayout:
    frames: int
    tokens_per_frame: int
    num_extra: int
    ranks: tuple[RankSlice, ...]
    local_len: int  # S: tokens every rank holds, padding included

    @property
    def degree(self) -> int:
        return len(self.ranks)

    @property
    def num_noisy(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.num_noisy + self.num_extra

    @property
    def max_frames(self) -> int:
        return max(r.frames for r in self.ranks)

    @property
    def padding(self) -> int:
        return self.degree * self.local_len - self.seq_len

    @staticmethod
    def make(frames: int, tokens_per_frame: int, num_extra: int, degree: int) -> ShardLayout:
        if degree < 1 or frames < 0 or tokens_per_frame < 1 or num_extra < 0:
            raise ValueError(f"bad layout request: frames={frames}, tokens_per_frame={tokens_per_frame}, "
                             f"num_extra={num_extra}, degree={degree}")
        base, rest = divmod(frames, degree)
        counts = [base + (1 if p < rest else 0) for p in range(degree)]
        total = frames * tokens_per_frame + num_extra
        local_len = max(max(counts) * tokens_per_frame, math.ceil(total / degree))
        slices, f0, e0 = [], 0, 0
        for c in counts:
            take = min(local_len - c * tokens_per_frame, num_extra - e0)
            slices.append(RankSlice(f0, f0 + c, e0, e0 + take, tokens_per_frame))
            f0, e0 = f0 + c, e0 + take
        assert f0 == frames and e0 == num_extra
        return ShardLayout(frames, tokens_per_frame, num_extra, tuple(slices), local_len)

    def token_index(self, rank: int) -> torch.Tensor:
        """Positions in the unsharded sequence of ``rank``'s valid tokens, in its local order."""
        s = self.ranks[rank]
        t = self.tokens_per_frame
        noisy = torch.arange(s.frame_start * t, s.frame_end * t)
        extra = torch.arange(self.num_noisy + s.extra_start, self.num_noisy + s.extra_end)
        return torch.cat([noisy, extra])

    def key_plan(self, ulysses: int, ring: int) -> KeyPlan:
        """Valid key positions of each ring chunk (the ulysses-gathered sequences of one ring step).

        Sequence-parallel rank ``p = ring_rank * ulysses + ulysses_rank`` (ulysses innermost).
        """
        if ulysses * ring != self.degree:
            raise ValueError(f"ulysses {ulysses} x ring {ring} != layout degree {self.degree}")
        chunks: list[int | torch.Tensor] = []
        s = self.local_len
        for j in range(ring):
            valid = [self.ranks[j * ulysses + u].num_valid for u in range(ulysses)]
            if all(v == s for v in valid[:-1]):
                chunks.append((ulysses - 1) * s + valid[-1])  # padding only at the end: a prefix
            else:
                chunks.append(torch.cat([torch.arange(u * s, u * s + v) for u, v in enumerate(valid)]))
        return KeyPlan(tuple(chunks), ulysses * s)


@dataclass(frozen=True)
class KeyPlan:
    """Per ring chunk: the number of leading valid keys (int) or their positions (index tensor)."""

    chunks: tuple[int | torch.Tensor, ...]
    chunk_len: int

    def to(self, device: torch.device) -> KeyPlan:
        return KeyPlan(tuple(c if isinstance(c, int) else c.to(device) for c in self.chunks), self.chunk_len)

    def valid_keys(self, chunk: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the padding keys of ring chunk ``chunk`` from k, v [B, chunk_len, H, D]."""
        sel = self.chunks[chunk]
        if isinstance(sel, int):
            if sel == k.shape[1]:
                return k, v
            return k[:, :sel], v[:, :sel]
        return k.index_select(1, sel), v.index_select(1, sel)

    @property
    def has_padding(self) -> bool:
        return any(not isinstance(c, int) or c != self.chunk_len for c in self.chunks)
