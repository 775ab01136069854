"""Fast mode (render/model/fast): a cache that never skips is the exact path bit for bit, skip and
guidance schedules run the documented number of forwards, the preset, --fast and the manifest's
``fast`` column."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from render.model.checkpoint import DiTConfig
from render.model.clip_loop import ChainRenderer, ShotConditioning
from render.model.dit.init import fill_random_
from render.model.dit.model import S2VDiT
from render.model.fast import GuidanceSchedule, StepCache
from render.settings import RenderSettings

CFG = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=5, audio_inject_layers=[0, 2, 4],
                audio_dim=32, text_len=32)
LATENT_HW = (8, 8)


def _model(seed: int = 0) -> S2VDiT:
    torch.manual_seed(seed)
    return fill_random_(S2VDiT(CFG), seed).eval().requires_grad_(False)


def _shot(seed: int = 1) -> ShotConditioning:
    g = torch.Generator().manual_seed(seed)
    h, w = LATENT_HW
    return ShotConditioning(
        prompt_context=torch.randn(6, CFG.text_dim, generator=g), negative_context=torch.randn(4, CFG.text_dim, generator=g),
        ref_latents=torch.randn(1, CFG.in_dim, 1, h, w, generator=g), ref_pixels=torch.zeros(3, 8 * h, 8 * w),
        audio_frames=torch.randn(1, 25, CFG.audio_dim, 16, generator=g), height=8 * h, width=8 * w)


def _settings(**fast) -> RenderSettings:
    return RenderSettings(steps=12, infer_frames=8, motion_frames=5, **fast)


class _Counting:
    """Counts block-stack passes per batch row (what a forward costs)."""

    def __init__(self, dit: S2VDiT):
        self.rows = 0
        self.calls = 0
        dit.blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.rows += out.shape[0]
        self.calls += 1


def _sample(settings: RenderSettings, dit: S2VDiT | None = None) -> tuple[torch.Tensor, ChainRenderer, _Counting]:
    dit = dit or _model()
    counter = _Counting(dit)
    renderer = ChainRenderer(dit, types.SimpleNamespace(chunk_local=False), settings, "cpu", progress=False)
    shot = _shot()
    with torch.inference_mode():
        latents = renderer.sample(shot, shot.audio_frames[..., :settings.infer_frames], None, None, False, 0, 0)
    return latents, renderer, counter


@pytest.mark.parametrize("mode", ["residual", "audio"])
@pytest.mark.parametrize("cfg_batch", [True, False])
def test_a_cache_that_never_skips_is_the_exact_path_bit_for_bit(mode, cfg_batch):
    exact, _, exact_count = _sample(_settings(cfg_batch=cfg_batch))
    cached, renderer, count = _sample(_settings(cfg_batch=cfg_batch, step_cache=mode, step_cache_threshold=0.0))
    assert torch.equal(cached, exact)
    assert count.rows == exact_count.rows == 2 * 12
    assert renderer.fast_stats[0].forwards == 24 and renderer.fast_stats[0].computed_steps == 12


def test_default_settings_keep_the_exact_loop_and_record_nothing():
    _, renderer, count = _sample(_settings())
    assert renderer.fast_stats == [] and count.rows == 24


@pytest.mark.parametrize("mode", ["residual", "audio"])
def test_a_skip_schedule_runs_the_documented_number_of_forwards(mode):
    # An infinite threshold skips whenever allowed: warmup 3 steps computed, then at most 2
    # skipped in a row, the last step computed: steps 0,1,2 | 3 4 skip, 5 | 6 7 skip, 8 | 9 10 skip, 11
    settings = _settings(step_cache=mode, step_cache_threshold=10.0)
    latents, renderer, count = _sample(settings)
    stats = renderer.fast_stats[0]
    assert stats.computed_steps == 6 and stats.forwards == 12 and count.rows == 12
    assert stats.speedup == 2.0
    exact, _, _ = _sample(_settings())
    assert torch.isfinite(latents).all() and not torch.equal(latents, exact)


def test_max_skips_sets_the_skip_run_length():
    # warmup 3 computed, then runs of 3 skipped + 1 computed, the last step computed:
    # 0 1 2 | 3 4 5 skip, 6 | 7 8 9 skip, 10 | 11 (last) -> 6 computed
    settings = _settings(step_cache="audio", step_cache_threshold=10.0, step_cache_max_skips=3)
    _, renderer, count = _sample(settings)
    assert renderer.fast_stats[0].computed_steps == 6 and count.rows == 12
    assert renderer.fast_stats[0].step_kinds == {"cfg": 6, "cond": 0, "cfg_skip": 6, "cond_skip": 0}


def test_the_skip_decision_follows_the_accumulated_indicator():
    cache = StepCache("residual", threshold=0.5, steps=10, warmup=1, max_skips=5)
    dit = _model()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, CFG.dim, generator=g)
    small = [base + 0.05 * i * torch.randn(1, 4, CFG.dim, generator=g) for i in range(5)]
    inputs = [base, *small[1:], torch.randn(1, 4, CFG.dim, generator=g)]  # the last one: a new input
    e0 = torch.zeros(1, 2, 6, CFG.dim)
    decisions, indicators = [], []
    with cache.attached(dit):
        for step, h in enumerate(inputs):
            cache.begin_step(step, (0,))
            decisions.append(cache._decide(dit, h, e0, 4))
            indicators.append(cache._indicator)
    assert "run_blocks" not in vars(dit)  # detached again
    assert decisions[0] is False  # warmup (and no previous input)
    assert all(i < 0.5 for i in indicators[1:5]) and indicators[5] > 0.5
    assert decisions[1] is True  # a small change is skipped...
    assert decisions[5] is False  # ...a large one always computed
    # skipped while the sum since the last computed step stays below the threshold
    total = 0.0
    for skipped, ind in zip(decisions[1:5], indicators[1:5]):
        assert skipped == (total + ind < 0.5)
        total = total + ind if skipped else 0.0


@pytest.mark.parametrize("until,every,expected", [(1.0, 1, 12), (0.5, 1, 6), (1.0, 3, 4), (0.5, 2, 3), (0.01, 1, 1)])
def test_guidance_schedule_counts_the_unconditional_forwards(until, every, expected):
    schedule = GuidanceSchedule(12, until, every)
    assert schedule.uncond_steps() == expected and schedule.runs_uncond(0)
    _, renderer, count = _sample(_settings(cfg_until=until, cfg_every=every))
    assert count.rows == 12 + expected
    if (until, every) != (1.0, 1):
        assert renderer.fast_stats[0].forwards == 12 + expected


@pytest.mark.parametrize("until,steps,expected", [(0.55, 100, 55), (0.28, 25, 7), (0.14, 50, 7)])
def test_guidance_interval_is_not_lengthened_by_float_error(until, steps, expected):
    """until x steps that is whole in decimal but not in binary floating point (0.55 x 100)."""
    assert GuidanceSchedule(steps, until, 1).uncond_steps() == expected


def test_guidance_reuse_with_a_current_difference_is_plain_cfg():
    from render.model.fast import reuse_guidance

    cond, uncond = torch.randn(5), torch.randn(5)
    assert torch.allclose(reuse_guidance(cond, cond - uncond, 4.5), uncond + 4.5 * (cond - uncond), atol=1e-6)


def test_step_cache_and_guidance_schedule_combine():
    settings = _settings(step_cache="residual", step_cache_threshold=10.0, cfg_until=0.5)
    latents, renderer, count = _sample(settings)
    stats = renderer.fast_stats[0]
    assert stats.uncond_steps == 6 and count.rows == stats.forwards < 12 + 6
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("field,value", [("step_cache", "teacache"), ("step_cache_threshold", -0.1),
                                         ("step_cache_threshold", float("nan")), ("cfg_until", 0.0),
                                         ("cfg_until", 1.5), ("cfg_every", 0), ("cfg_every", 1.5),
                                         ("step_cache_max_skips", 0)])
def test_fast_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(RenderSettings(), **{field: value})


def test_step_cache_refuses_a_sharded_model():
    dit = _model()
    dit.sharding = object()
    with pytest.raises(ValueError, match="one device"):
        with StepCache("residual", 0.1, 10).attached(dit):
            pass


# --- the preset, --fast and the manifest column ---------------------------------------------------


def test_preset_contents_and_what_it_turns_on_per_device():
    from render.model.fast.preset import FAST_SAMPLING, apply_fast, fast_plan

    fast = apply_fast(RenderSettings())
    assert {k: getattr(fast, k) for k in FAST_SAMPLING} == FAST_SAMPLING
    assert fast.step_cache != "off"
    assert dataclasses.replace(fast, **{k: getattr(RenderSettings(), k) for k in FAST_SAMPLING}) == RenderSettings()
    cpu = fast_plan("cpu", capability=None, fa4_installed=False)
    assert not (cpu.fp8 or cpu.vae_bf16 or cpu.fa4)
    assert "fp8" in cpu.describe() and "Not on this device" in cpu.describe()
    h100 = fast_plan("cuda", capability=(9, 0), fa4_installed=True)
    assert h100.fp8 and h100.vae_bf16 and h100.fa4 and "Not on this device" not in h100.describe()
    a100 = fast_plan("cuda", capability=(8, 0), fa4_installed=True)
    assert not a100.fp8 and a100.vae_bf16 and not a100.fa4


def test_fast_flag_of_render_shot_and_run():
    from s2v.cli import _settings, build_parser

    base = ["render-shot", "--ckpt", "c", "--audio", "a.wav", "--image", "i.png", "--prompt", "p", "--out", "o.mp4"]
    parser = build_parser()
    plain, fast = parser.parse_args(base), parser.parse_args([*base, "--fast"])
    assert plain.fast is False and fast.fast is True
    assert _settings(plain).step_cache == "off"
    from render.model.fast.preset import apply_fast

    assert _settings(fast) == apply_fast(_settings(plain))
    run = parser.parse_args(["run", "m.parquet", "--run-dir", "r", "--ckpt", "c", "--fast"])
    assert run.fast is True


def _manifest(tmp_path, fast_values, arrow_type=None):
    import pyarrow as pa

    from manifests.schema import write_manifest
    from tests.manifests.malformed_cases import make_media, rows

    make_media(tmp_path)
    table = pa.Table.from_pylist(rows(n=len(fast_values)))
    table = table.append_column("fast", pa.array(fast_values, arrow_type))
    write_manifest(table, tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


def test_manifest_fast_column_flows_into_the_shot_settings_and_the_key(tmp_path):
    from cluster.fingerprint import InputHashes, shot_key
    from cluster.settings import RunSettings
    from manifests import read_manifest

    shots = read_manifest(_manifest(tmp_path, [True, False, None]))
    assert [s.fast for s in shots] == [True, False, None]
    run = RunSettings(ckpt=str(tmp_path))
    got = [run.render_settings(s).step_cache != "off" for s in shots]
    assert got == [True, False, False]
    run_fast = RunSettings(ckpt=str(tmp_path), fast=True)  # --fast decides the null cell only
    assert [run_fast.render_settings(s).step_cache != "off" for s in shots] == [True, False, True]
    env = {"model": "m", "code": "c"}
    hashes = InputHashes(tmp_path / "hashes.json")
    on, off = shot_key(shots[0], run, env, hashes), shot_key(shots[1], run, env, hashes)
    assert on.parts["render"] != off.parts["render"]
    assert shot_key(shots[2], run, env, hashes).frames != shot_key(shots[2], run_fast, env, hashes).frames
    # Keyed by the effective value: a False cell under --fast renders exactly, as without --fast ...
    assert shot_key(shots[1], run_fast, env, hashes).frames == off.frames
    # ... and a shot that is not fast keeps the key it had before fast mode existed.
    row = {k: v for k, v in shots[2].to_row().items() if k != "fast"}
    before = {k: v for k, v in run.to_dict().items() if k not in ("fast", "fp8", "vae_dtype")}  # all added later
    from cluster.fingerprint import _ROW_NOT_RENDER, _RUN_NOT_FRAMES, json_digest

    old = json_digest([{k: v for k, v in row.items() if k not in _ROW_NOT_RENDER},
                       {k: v for k, v in before.items() if k not in _RUN_NOT_FRAMES}])
    assert shot_key(shots[2], run, env, hashes).parts["render"] == old


def test_manifest_fast_column_must_be_boolean(tmp_path):
    import pyarrow as pa

    from manifests import validate_manifest

    report = validate_manifest(_manifest(tmp_path, [1, 0], pa.int64()))
    [problem] = report.errors
    assert (problem.column, problem.rule) == ("fast", "type") and "boolean" in problem.message
