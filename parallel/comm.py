"""Collectives used by the sequence-parallel DiT (torch.distributed only; NCCL or gloo)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def scatter_heads_gather_seq(x: torch.Tensor, group: dist.ProcessGroup | None, degree: int) -> torch.Tensor:
    """Ulysses forward all-to-all: [..., S, H, D] (local tokens, all heads) ->
    [..., degree * S, H / degree, D] (the group's tokens in member order, my head slice).

    Leading dims (e.g. a stacked q/k/v and the batch) travel in one collective.
    """
    if degree == 1:
        return x
    *lead, s, h, d = x.shape
    # [degree, *lead, S, H/degree, D]: chunk i goes to member i (its head slice)
    send = x.reshape(*lead, s, degree, h // degree, d).movedim(-3, 0).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[i] = member i's tokens for my heads -> tokens of member i come i-th in the sequence
    return recv.movedim(0, -4).reshape(*lead, degree * s, h // degree, d)


def gather_heads_scatter_seq(x: torch.Tensor, group: dist.ProcessGroup | None, degree: int) -> torch.Tensor:
    """Ulysses inverse all-to-all: [..., degree * S, H / degree, D] -> [..., S, H, D]."""
    if degree == 1:
        return x
    *lead, n, hl, d = x.shape
    s = n // degree
    send = x.reshape(*lead, degree, s, hl, d).movedim(-4, 0).contiguous()  # chunk i: member i's tokens
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[i] = my tokens, head slice i -> heads in member order
    return recv.movedim(0, -3).reshape(*lead, s, degree * hl, d)


def all_gather_dim0(x: torch.Tensor, group: dist.ProcessGroup | None, degree: int) -> torch.Tensor:
    """Concatenate equal-shaped tensors of the group's members along dim 0 (member order)."""
    if degree == 1:
        return x
    x = x.contiguous()
    out = x.new_empty((degree * x.shape[0], *x.shape[1:]))
    _all_gather_single(out, x, group=group)
    return out


# torch 2.13 renamed all_gather_into_tensor (still the only name in the GPUs' torch 2.11).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def gather_frames(local: torch.Tensor, counts: list[int], group: dist.ProcessGroup | None,
                  frame_dim: int = 2) -> torch.Tensor:
    """Concatenate along ``frame_dim`` pieces of different lengths (``counts[i]`` from member i)."""
    degree = len(counts)
    if degree == 1:
        return local
    most = max(counts)
    if local.shape[frame_dim] < most:
        pad_shape = list(local.shape)
        pad_shape[frame_dim] = most - local.shape[frame_dim]
        local = torch.cat([local, local.new_zeros(pad_shape)], dim=frame_dim)
    stacked = all_gather_dim0(local.unsqueeze(0), group, degree)  # [degree, *local.shape]
    parts = [stacked[i].narrow(frame_dim, 0, c) for i, c in enumerate(counts)]
    return torch.cat(parts, dim=frame_dim)
