"""Run-level settings: what shapes the frames (in every shot's key) vs how the run is executed (not).

``RunSettings`` + the manifest's per-shot columns fully determine a shot's frames, so both go
into each shot's key (cluster.fingerprint; ``crf`` only into its encode half). ``EngineOptions``
(group size, timeouts, retry budgets) change how work is spread, not what it produces, and may
differ between a run and its resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from manifests import Shot
from render.settings import (
    DEFAULT_MIN_PARALLEL_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    DEFAULT_SETTINGS,
    DEFAULT_TARGET_SECONDS,
    RenderSettings,
)

# RenderSettings fields set once per run (the others come from each shot's manifest row).
_RUN_RENDER_FIELDS = (
    "infer_frames", "motion_frames", "fps", "official_frame_drop", "start_from_ref", "cfg_batch", "noise",
    "crf",
)


VAE_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # --vae-dtype value -> torch dtype name


@dataclass(frozen=True)
class RunSettings:
    ckpt: str  # checkpoint folder (official layout), absolute
    # Run-wide render parameters; their defaults are RenderSettings' (render.settings).
    crf: int = DEFAULT_SETTINGS.crf
    infer_frames: int = DEFAULT_SETTINGS.infer_frames
    motion_frames: int = DEFAULT_SETTINGS.motion_frames
    fps: int = DEFAULT_SETTINGS.fps
    official_frame_drop: bool = DEFAULT_SETTINGS.official_frame_drop
    start_from_ref: bool = DEFAULT_SETTINGS.start_from_ref
    cfg_batch: bool = DEFAULT_SETTINGS.cfg_batch
    noise: str = DEFAULT_SETTINGS.noise
    run_seed: int = 0  # seeds of shots whose manifest seed is null derive from it
    text_encoder_dtype: str = "float32"  # umT5 runs once per unique prompt, outside the groups
    # How shots with segment_mode auto/parallel are split (render.shot.plan).
    segment_seconds: float = DEFAULT_TARGET_SECONDS
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS
    min_parallel_seconds: float = DEFAULT_MIN_PARALLEL_SECONDS
    # --fast: fast mode's sampling for every shot whose manifest ``fast`` cell is null
    fast: bool = False
    # How every rank loads the models (one load per group serves all its shots, so these are
    # run-wide, not per shot): fp8 e4m3 linears in the DiT (GPU sm89+) and the writer's VAE dtype.
    # Both change the frames slightly; --fast's sampling and these two make render-shot's --fast.
    fp8: bool = False
    vae_dtype: str = "fp32"

    def __post_init__(self) -> None:
        # The run-wide render parameters are checked now, by RenderSettings' own rules, so a bad
        # --infer-frames fails when `s2v run` starts rather than when the first shot renders.
        RenderSettings(**self._run_render_fields())
        if self.vae_dtype not in VAE_DTYPES:
            raise ValueError(f"vae_dtype={self.vae_dtype!r}: expected one of {sorted(VAE_DTYPES)}")

    def _run_render_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _RUN_RENDER_FIELDS}

    def segment_options(self, shot: Shot) -> Any:
        """How ``shot`` is split: its manifest segment mode, this run's segment sizes."""
        from render.shot.plan import SegmentOptions

        return SegmentOptions(mode=shot.segment_mode, target_seconds=self.segment_seconds,
                              overlap_seconds=self.overlap_seconds, min_parallel_seconds=self.min_parallel_seconds)

    def render_settings(self, shot: Shot) -> RenderSettings:
        """The shot's settings (RenderSettings checks them on construction); a shot's ``fast``
        cell, or the run's --fast where it is null, adds fast mode's sampling fields."""
        settings = RenderSettings(
            size=shot.size, steps=shot.steps, guidance=shot.guidance, shift=shot.shift,
            sampler=shot.sampler, seed=shot.seed, negative_prompt=shot.negative_prompt,
            **self._run_render_fields(),
        )
        if shot.fast if shot.fast is not None else self.fast:
            from render.model.fast.preset import apply_fast

            settings = apply_fast(settings)
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunSettings:
        known = {f.name for f in fields(RunSettings)}
        return RunSettings(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class EngineOptions:
    group_size: int = 1  # ranks (GPUs) per render group
    groups: int = 1  # render groups
    slot_resource: str | None = None  # Ray resource one rank takes: GPU, render_slot or CPU (None: detect)
    collective_timeout_s: float = 30.0  # a survivor of a dead rank errors out after this, not 30 min
    # The other ranks wait this long for the writer rank's VAE work and file writes of one clip
    # (or one segment's conditioning) in the hand-off group; a dead writer still fails at once.
    handoff_timeout_s: float = 600.0
    group_start_timeout_s: float = 300.0  # placement + weight load + process group
    group_start_retries: int = 3  # consecutive failed starts of one group before it is given up
    node_max_failures: int = 3  # failures (starts or rank deaths) before a node is excluded
    shot_max_failures: int = 3  # failed attempts of one shot of any kind (besides "same error twice")
    prep_chunk: int = 8  # shots per audio/prompt preparation call
    prep_max_restarts: int = 3  # restarts of a dead preparation actor before its unfinished shots fail
    # A shot whose preparation raised (the chunk's call, or its own features) is prepared again this
    # many times before it fails: umT5 on a GPU beside a render group may find the card full for a while.
    prep_retries: int = 2
    cpu_threads_per_rank: int = 1  # torch threads of a rank on CPU
    prep_threads: int = 4  # torch threads of the preparation actor (umT5 and wav2vec run on CPU)
    # Where the preparation actor runs umT5: "cpu" (default; ~1 min for 4 prompts in float32 on 16
    # cores, which the first segment of a run waits for) or "cuda" (the node's GPU, loaded per
    # chunk of prompts and released at once: seconds, but 10.6 GiB (bf16) / 21 GiB (float32) on
    # the render group's card for that time, so only where the card has that room).
    prep_text_encoder_device: str = "cpu"
    results_interval_s: float = 30.0  # results.parquet is rewritten at most this often during a run
    keep_work: bool = False  # keep segment intermediates after a shot is published
    parallel: str = "auto"  # parallel dims of a group: "auto" or e.g. "ulysses=2,cfg=2,shard_weights=1"
    offload: bool = False  # DiT blocks streamed from host memory to each GPU (groups of one GPU)

    def validate(self) -> None:
        problems = []
        if self.group_size < 1:
            problems.append(f"--group-size {self.group_size}: expected >= 1")
        if self.groups < 1:
            problems.append(f"--groups {self.groups}: expected >= 1")
        if self.collective_timeout_s <= 0:
            problems.append(f"--collective-timeout {self.collective_timeout_s}: expected > 0 seconds")
        if self.handoff_timeout_s <= 0:
            problems.append(f"--handoff-timeout {self.handoff_timeout_s}: expected > 0 seconds")
        if self.group_start_retries < 1 or self.shot_max_failures < 1 or self.node_max_failures < 1:
            problems.append("retry budgets must be >= 1")
        if self.offload and self.group_size != 1:
            problems.append(f"--offload streams the DiT to one GPU; --group-size {self.group_size} shares it over "
                            "several (use one or the other)")
        if self.prep_max_restarts < 0:
            problems.append(f"prep_max_restarts {self.prep_max_restarts}: expected >= 0")
        if self.prep_retries < 0:
            problems.append(f"prep_retries {self.prep_retries}: expected >= 0")
        dev = self.prep_text_encoder_device
        if not (dev in ("cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            problems.append(f"text encoder device {dev!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        if problems:
            raise ValueError("; ".join(problems))
        if self.parallel != "auto":
            kwargs = parallel_kwargs(self.parallel, self.group_size)
            if self.offload and kwargs.get("shard_weights"):
                raise ValueError(f"--offload with --parallel {self.parallel!r}: weight sharding would move the "
                                 "streamed blocks back onto the GPU; use one or the other")


_PARALLEL_KEYS = {"ulysses": int, "ring": int, "cfg": int, "shard_weights": bool, "attention_engine": str}


def parallel_kwargs(spec: str, group_size: int) -> dict[str, Any]:
    """``"ulysses=2,cfg=2"`` -> ParallelDims keyword arguments, checked against the group size
    (a group is one model replica: ``replicas`` is the number of groups, not a dims field here)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in _PARALLEL_KEYS:
            raise ValueError(f"--parallel {spec!r}: {item!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(_PARALLEL_KEYS)}")
        kind = _PARALLEL_KEYS[key]
        try:
            out[key] = value in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise ValueError(f"--parallel {spec!r}: {key}={value!r} is not a valid {kind.__name__}") from None
    product = out.get("ulysses", 1) * out.get("ring", 1) * out.get("cfg", 1)
    if product != group_size:
        raise ValueError(f"--parallel {spec!r}: ulysses x ring x cfg = {product}, but --group-size is {group_size}")
    return out
