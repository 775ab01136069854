"""Single-GPU speed for the S2V DiT, each piece with a plain torch reference.

``attention`` (the one attention entry point and its per-device, per-shape backend choice),
``norms`` and ``rope`` (fused Triton glue between the matmuls), ``fp8`` (opt-in fp8 linears),
``glue`` (the fused implementation of ``render.model.dit.layers.TorchGlue``) and ``select``
(``optimize_dit``: installs all of it on a built model, once, and logs the choice). Triton is
imported only when a CUDA tensor reaches a fused kernel.
"""
