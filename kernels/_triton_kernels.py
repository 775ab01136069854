"""Triton kernels for the work between the DiT's matmuls. Imported only on a GPU with Triton.

Every kernel handles one token row per program, with the whole row in registers (rows are at
most 16 384 wide here), so each tensor is read once and written once. The plain torch
equivalents, used on CPU and as the test reference, sit next to the Python wrappers in
``kernels/norms.py``, ``kernels/rope.py`` and ``kernels/fp8.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_E4M3_MAX = tl.constexpr(448.0)


@triton.jit
def residual_layer_norm_kernel(
    X, Y, XOUT, OUT, G, A, B,
    L, D, n_first, eps,
    g_sb, g_ss, a_sb, a_ss, b_sb, b_ss,
    HAS_Y: tl.constexpr, HAS_GATE: tl.constexpr, WRITE_X: tl.constexpr,
    DO_NORM: tl.constexpr, HAS_AFFINE: tl.constexpr, BLOCK: tl.constexpr,
):
    """x' = x + gate[seg] * y (optional); out = LayerNorm(x') * A[seg] + B[seg] (optional).

    X, XOUT: float32 residual rows [B*L, D]; Y: any float dtype; G/A/B: float32 [B, S, D] given by
    strides (0 strides broadcast), seg = 0 for the first n_first tokens of each sample, else 1.
    """
    row = tl.program_id(0).to(tl.int64)
    bi = row // L
    seg = ((row % L) >= n_first).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    x = tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Y:
        y = tl.load(Y + row * D + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_GATE:
            g = tl.load(G + bi * g_sb + seg * g_ss + offs, mask=mask, other=0.0)
            y = y * g
        x = x + y
        if WRITE_X:
            tl.store(XOUT + row * D + offs, x, mask=mask)
    if DO_NORM:
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / D
        h = xc * (1.0 / tl.sqrt_rn(var + eps))
        if HAS_AFFINE:
            a = tl.load(A + bi * a_sb + seg * a_ss + offs, mask=mask, other=0.0)
            b = tl.load(B + bi * b_sb + seg * b_ss + offs, mask=mask, other=0.0)
            h = h * a + b
        tl.store(OUT + row * D + offs, h.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_rope_kernel(
    X, W, COS, SIN, OUT,
    L, D, eps,
    HALF_HEAD: tl.constexpr, HAS_ROPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """RMSNorm over the whole row (rounded like the torch module), then optionally rotate the
    interleaved pairs (2k, 2k+1) of every head by the row's angles COS/SIN [L, HALF_HEAD]."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    x = tl.load(X + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    # torch: (y.to(x.dtype) * weight).to(x.dtype) -- two roundings to the row's dtype
    y = (x * r).to(OUT.dtype.element_ty).to(tl.float32) * w
    y = y.to(OUT.dtype.element_ty).to(tl.float32)
    if HAS_ROPE:
        pairs = tl.reshape(y, (BLOCK // 2, 2))
        y0, y1 = tl.split(pairs)
        p = tl.arange(0, BLOCK // 2)
        pmask = p < D // 2
        li = row % L
        j = p % HALF_HEAD
        c = tl.load(COS + li * HALF_HEAD + j, mask=pmask, other=0.0)
        s = tl.load(SIN + li * HALF_HEAD + j, mask=pmask, other=0.0)
        o0 = y0 * c - y1 * s
        o1 = y0 * s + y1 * c
        y = tl.reshape(tl.join(o0, o1), (BLOCK,))
    tl.store(OUT + row * D + offs, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def quantize_rows_kernel(X, Q, S, K, x_row_stride, APPLY_GELU: tl.constexpr, BLOCK: tl.constexpr):
    """Per-row fp8 e4m3: scale = amax / 448, q = x * (448 / amax); optionally GELU(tanh) first, with
    its result rounded to X's dtype as the unfused GELU module would."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    x = tl.load(X + row * x_row_stride + offs, mask=mask, other=0.0).to(tl.float32)
    if APPLY_GELU:
        z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = x * tl.sigmoid(2.0 * z)  # 0.5 x (1 + tanh z)
        x = x.to(X.dtype.element_ty).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12)
    scale = tl.div_rn(amax, FP8_E4M3_MAX)
    q = x * tl.div_rn(FP8_E4M3_MAX, amax)  # one IEEE division per row, not per element
    q = tl.minimum(tl.maximum(q, -FP8_E4M3_MAX), FP8_E4M3_MAX)
    tl.store(Q + row * K + offs, q.to(Q.dtype.element_ty), mask=mask)
    tl.store(S + row, scale)


def launch_config(width: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of ``width`` elements held whole in one program."""
    block = triton.next_power_of_2(width)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, warps
