"""Block offload (render/model/offload.py): bit-identical predictions, blocks streamed ahead,
never more than ahead + 1 of them on the device, every block back in host memory afterwards."""

from __future__ import annotations

import copy

import pytest
import torch

from render.model.checkpoint import DiTConfig
from render.model.dit.init import fill_random_
from render.model.dit.model import S2VDiT
from render.model.offload import _blocks_per_page, offload_dit
from tests.kernels.helpers import dit_inputs, needs_cuda, run_dit

CFG = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=5, audio_inject_layers=[0, 2, 4],
                audio_dim=32, text_len=32)


def _model(seed: int = 0) -> S2VDiT:
    torch.manual_seed(seed)
    return fill_random_(S2VDiT(CFG), seed).eval().requires_grad_(False)


def _block_tensors(model: S2VDiT) -> list[torch.Tensor]:
    return [t for blk in model.blocks for t in list(blk.parameters()) + list(blk.buffers())]


@pytest.mark.parametrize("ahead", [1, 2])
def test_offloaded_model_predicts_bit_identical_flow(ahead):
    plain = _model()
    streamed = copy.deepcopy(plain)
    state = offload_dit(streamed, "cpu", ahead=ahead)
    inp = dit_inputs(CFG, frames=2, hw=(8, 8))
    want = run_dit(plain, inp)
    got = run_dit(streamed, inp)
    assert torch.equal(got, want)
    # a second forward (block 0 was prefetched at the end of the first) is the same again
    assert torch.equal(run_dit(streamed, inp), want)
    assert state.peak_blocks == ahead + 1
    assert not state.active  # every block left, also the ones whose text K/V prepare projected


def test_blocks_run_on_the_streamed_copy_and_return_to_host_storage():
    model = _model()
    state = offload_dit(model, "cpu", ahead=1)
    host_ptrs = [{t.data_ptr() for t in list(blk.parameters())} for blk in model.blocks]
    seen: list[tuple[int, bool, int]] = []
    for i, blk in enumerate(model.blocks):
        def probe(mod, args, i=i):
            ptrs = {p.data_ptr() for p in mod.parameters()}
            seen.append((i, ptrs.isdisjoint(host_ptrs[i]), len(state.on_device)))
        blk.register_forward_pre_hook(probe)  # after offload's own pre-hook
    run_dit(model, dit_inputs(CFG, frames=2, hw=(8, 8)))
    assert [s[0] for s in seen] == list(range(CFG.num_layers))
    assert all(on_copy for _, on_copy, _ in seen), "a block ran on its host storage"
    assert all(n <= 2 for _, _, n in seen)
    # afterwards every block's tensors are views of its host buffer again
    for blk, packed in zip(model.blocks, state.packed):
        base = packed.host.data_ptr()
        for p in blk.parameters():
            assert base <= p.data_ptr() < base + packed.nbytes
    # prepare's K/V projection copies all 5 blocks and prefetches block 0 for the denoise, which
    # copies blocks 1..4 and again prefetches block 0: a block already on the device is not copied
    assert state.copies == 2 * CFG.num_layers + 1


def test_a_block_that_raises_still_returns_to_host_and_the_next_forward_works():
    model = _model()
    state = offload_dit(model, "cpu")
    inp = dit_inputs(CFG, frames=2, hw=(8, 8))
    want = run_dit(copy.deepcopy(_model()), inp)

    def boom(*_):
        raise torch.OutOfMemoryError("simulated")

    handle = model.blocks[2].self_attn.register_forward_pre_hook(boom)
    with pytest.raises(torch.OutOfMemoryError):
        run_dit(model, inp)
    handle.remove()
    assert not state.active and len(state.on_device) <= state.ahead + 1
    assert torch.equal(run_dit(model, inp), want)


def test_offload_refuses_a_second_install_and_a_bad_ahead():
    model = _model()
    with pytest.raises(ValueError, match="ahead=0"):
        offload_dit(copy.deepcopy(model), "cpu", ahead=0)
    offload_dit(model, "cpu")
    with pytest.raises(ValueError, match="already offloaded"):
        offload_dit(model, "cpu")


def test_pinned_pages_waste_little_of_the_power_of_two_rounding():
    release_block = 351_086_080 * 2  # bytes of one bf16 block of the 14B model (dim 5120, ffn 13824)
    n = _blocks_per_page(release_block)
    total = n * release_block
    assert (1 << (total - 1).bit_length()) / total < 1.05
    assert _blocks_per_page(1 << 20) == 1  # a power of two already: one block a page


@needs_cuda
def test_offload_on_cuda_is_bit_identical_and_keeps_blocks_off_the_card():
    plain = _model().to("cuda", torch.bfloat16)
    streamed = _model().to(torch.bfloat16)
    state = offload_dit(streamed, "cuda", ahead=1)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in _block_tensors(streamed))
    inp = dit_inputs(CFG, frames=2, hw=(8, 8))
    assert torch.equal(run_dit(streamed, inp), run_dit(plain, inp))
    assert state.peak_blocks == 2
