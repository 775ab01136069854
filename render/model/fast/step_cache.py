"""Step caching: skip the DiT blocks on denoising steps whose input barely changed.

Between two neighbouring denoising steps the transformer blocks' output residual (stream after
the blocks minus stream before them) changes little over most of the schedule. The cache keeps
the residual of the last computed step and, on a step it decides to skip, adds that residual to
the new stream instead of running the blocks. The patch embedding, time embedding and head still
run every step (they are a few per cent of a forward).

The decision follows an indicator: the relative L1 change of the first block's modulated input
(the noisy tokens after the time-conditioned LayerNorm shift/scale) since the previous step,
accumulated over the steps skipped so far. While the sum stays below ``threshold`` the step is
skipped; the first computed step after that resets it. The first ``warmup`` steps and the last
step are always computed, and at most ``max_skips`` steps in a row are skipped.

Two modes:

* ``"residual"``: the whole residual is reused (the audio injections' part included, i.e. the
  audio's effect of the last computed step).
* ``"audio"``: the audio injections of the conditional row are recomputed on every skipped step.
  On a computed step the cache also records, before each injector, how far the blocks' own
  (non-audio) work had moved the noisy tokens; on a skipped step each injector runs on the new
  stream plus that recorded offset plus the new injections before it, and the non-audio part of
  the residual is reused. This costs one audio cross-attention per injector (small next to a
  block) and, per injector, a copy of the noisy tokens (bfloat16 on the GPU: 14B at 720p, 8.8 GB).
  The unconditional row (silent audio) reuses its whole residual as in ``"residual"`` mode: its
  offsets would double that memory, which does not fit an 80 GB GPU at 720p.

The cache attaches to a model by replacing its ``run_blocks`` on the instance for the duration of
a clip (:meth:`StepCache.attached`); a computed step calls the model's own ``run_blocks``, so the
cached and exact paths run the same code. With ``threshold = 0`` every step is computed and the
result is bit-for-bit that of the model without the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from render.model.dit.model import S2VCondition, S2VDiT

#: steps always computed at the start: the first steps shape the layout and the mouth, and the
#: indicator needs a previous step to compare with.
DEFAULT_WARMUP = 3
#: the CFG row whose audio injections "audio" mode recomputes (0: conditional, 1: unconditional)
AUDIO_ROW = 0
#: longest run of skipped steps (RenderSettings.step_cache_max_skips): at 40 steps the per-step
#: indicator is 0.03-0.09 on the tiny model, so this bound, not the threshold, sets the skip rate.
DEFAULT_MAX_SKIPS = 2


@dataclass
class StepRecord:
    """What the cache saw on one call (one DiT forward of one step)."""

    step: int
    rows: tuple[int, ...]
    indicator: float  # relative L1 change of the modulated input since the previous step
    computed: bool


@dataclass
class StepCache:
    """Skip decisions and the cached residuals of one clip (make one per clip).

    ``rows``: which CFG rows (0 conditional, 1 unconditional) the next forward's batch holds; the
    loop sets it before each forward. Residuals are kept per row, so a forward of the conditional
    row alone (guidance reuse) can be followed by a skipped step of both rows only if both rows
    have a residual.
    """

    mode: str  # "residual" or "audio"
    threshold: float
    steps: int
    warmup: int = DEFAULT_WARMUP
    max_skips: int = DEFAULT_MAX_SKIPS
    rows: tuple[int, ...] = (0,)
    history: list[StepRecord] = field(default_factory=list)
    _step: int = -1
    _decided_step: int = -1
    _skip: bool = False
    _accumulated: float = 0.0
    _skipped_in_a_row: int = 0
    _indicator: float = float("nan")
    _prev_modulated: torch.Tensor | None = None
    _residual: dict[int, torch.Tensor] = field(default_factory=dict)
    # audio mode: per row, per injector the non-audio offset of the noisy tokens
    _offsets: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("residual", "audio"):
            raise ValueError(f"step cache mode {self.mode!r}: expected 'residual' or 'audio'")

    # -- the loop's side -------------------------------------------------------------------
    def begin_step(self, step: int, rows: tuple[int, ...]) -> None:
        """Called by the loop before the forward(s) of ``step`` for CFG rows ``rows``."""
        self._step, self.rows = step, rows

    @property
    def computed_steps(self) -> int:
        return len({r.step for r in self.history if r.computed})

    def forwards(self) -> int:
        """DiT block passes actually run, counted per batch row (a batch of 2 counts 2)."""
        return sum(len(r.rows) for r in self.history if r.computed)

    @contextmanager
    def attached(self, dit: S2VDiT) -> Iterator[StepCache]:
        """Route ``dit``'s block stack through this cache while the context is open."""
        if dit.sharding is not None:
            raise ValueError("step caching runs on one device only: its skip decisions would differ between "
                             "the ranks of a render group; render with step_cache='off' (no --fast) in groups")
        if "run_blocks" in vars(dit):
            raise RuntimeError("this model already has a step cache attached")
        original = dit.run_blocks

        def run_blocks(h: torch.Tensor, e0: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
            return self._run(dit, original, h, e0, cond)

        dit.run_blocks = run_blocks  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del dit.run_blocks

    # -- the model's side ------------------------------------------------------------------
    def _decide(self, dit: S2VDiT, h: torch.Tensor, e0: torch.Tensor, n: int) -> bool:
        """Skip this step? Decided once per step, on its first forward (the conditional row)."""
        if self._decided_step == self._step:
            return self._skip
        blk = dit.blocks[0]
        # Read outside block 0's forward: with --offload its weights are in host memory here.
        modulation = blk.modulation.to(e0.device).float()
        shift, scale = (modulation[:, None] + e0[:1].float()).unbind(2)[:2]
        modulated = blk.glue.modulate(h[:1], n, shift, scale, blk.eps)[:, :n].float()
        prev = self._prev_modulated
        self._prev_modulated = modulated
        indicator = float("nan")
        if prev is not None:
            indicator = ((modulated - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)).item()
        self._indicator = indicator
        skip = (
            self.threshold > 0
            and prev is not None
            and self.warmup <= self._step < self.steps - 1
            and self._skipped_in_a_row < self.max_skips
            and self._accumulated + indicator < self.threshold
        )
        if skip:
            self._accumulated += indicator
            self._skipped_in_a_row += 1
        else:
            self._accumulated = 0.0
            self._skipped_in_a_row = 0
        self._decided_step, self._skip = self._step, skip
        return skip

    def _run(self, dit: S2VDiT, original, h: torch.Tensor, e0: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        if h.shape[0] != len(self.rows):
            raise RuntimeError(f"step cache: the forward has batch {h.shape[0]}, the loop announced rows {self.rows}")
        n = cond.num_noisy
        skip = self._decide(dit, h, e0, n) and all(r in self._residual for r in self.rows)
        self.history.append(StepRecord(self._step, self.rows, self._indicator, not skip))
        if skip:
            return self._reuse(dit, h, cond)
        if self.mode == "audio":
            return self._compute_recording(dit, original, h, e0, cond)
        out = original(h, e0, cond)
        for i, r in enumerate(self.rows):
            self._residual[r] = out[i] - h[i]
        return out

    def _store_dtype(self, t: torch.Tensor) -> torch.dtype:
        # The per-injector offsets are approximations anyway; bf16 halves their GPU memory.
        return torch.bfloat16 if t.is_cuda else torch.float32

    def _compute_recording(self, dit: S2VDiT, original, h: torch.Tensor, e0: torch.Tensor,
                           cond: S2VCondition) -> torch.Tensor:
        """The model's own forward, recording before each injector the non-audio offset of the
        noisy tokens (their input minus the stream's input minus the injections so far)."""
        n = cond.num_noisy
        audio_row = self.rows.index(AUDIO_ROW) if AUDIO_ROW in self.rows else None
        if audio_row is None:  # only the unconditional row: its whole residual is reused
            out = original(h, e0, cond)
            for i, r in enumerate(self.rows):
                self._residual[r] = out[i] - h[i]
            return out
        base = h[audio_row, :n]
        injected = torch.zeros_like(base)
        offsets: list[torch.Tensor] = []
        store = self._store_dtype(h)

        def record(module, args, out):
            nonlocal injected
            # converted now, for the conditional row alone: no copy of the stream is kept
            offsets.append((args[1][audio_row] - base - injected).to(store))
            injected = injected + out[audio_row]

        handle = dit.audio_injector.register_forward_hook(record)
        try:
            out = original(h, e0, cond)
        finally:
            handle.remove()
        for i, r in enumerate(self.rows):
            self._residual[r] = out[i] - h[i]
        self._residual[AUDIO_ROW][:n] -= injected  # the non-audio part of the conditional row's residual
        self._offsets[AUDIO_ROW] = offsets
        return out

    def _reuse(self, dit: S2VDiT, h: torch.Tensor, cond: S2VCondition) -> torch.Tensor:
        residual = torch.stack([self._residual[r] for r in self.rows])
        if self.mode == "residual":
            return h + residual
        out = h + residual
        if AUDIO_ROW not in self.rows:
            return out
        i = self.rows.index(AUDIO_ROW)
        n = cond.num_noisy
        base = h[i:i + 1, :n]
        injected = torch.zeros_like(base)
        tokens, glob = cond.audio_tokens[i:i + 1], cond.audio_global[i:i + 1]
        # the injectors in the order the blocks call them, as recorded
        for j, (_, k) in enumerate(sorted(dit.injector_of_block.items())):
            offset = self._offsets[AUDIO_ROW][j][None].to(base.dtype)
            injected = injected + dit.audio_injector(k, base + offset + injected, tokens, glob)
        out[i, :n] += injected[0]
        return out


def make_step_cache(settings) -> StepCache | None:
    """The step cache ``settings`` ask for (a RenderSettings), or None when step caching is off."""
    if settings.step_cache == "off":
        return None
    return StepCache(settings.step_cache, settings.step_cache_threshold, settings.steps,
                     max_skips=settings.step_cache_max_skips)
