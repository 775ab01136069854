"""Single-device S2V model and pipeline; parallelism lives in parallel/, orchestration in cluster/.

    settings.py  how a shot is rendered (one frozen, validated settings type and its defaults)
    model/       DiT, VAE, text and audio encoders, samplers, the chain of clips, checkpoint loading
    media/       audio decode, MP4 writing and muxing, images, pose videos, atomic publishing
    shot/        a shot's stages: plan -> condition -> render segment(s) -> stitch/publish
    quality/     seam, colour-drift and lip-sync measurements
    assembly.py  shots -> one film; film_slate.py: cards for shots not rendered;
                 film_sidecars.py: its EDL/CSV/OpenTimelineIO hand-off files

The model entry points load lazily, so that importing ``render.settings`` (the manifest
validator does) does not import the model code.
"""

from __future__ import annotations

__all__ = ["S2VDiT", "load_dit"]


def __getattr__(name: str):
    if name in __all__:
        from render.model import dit

        return getattr(dit, name)
    raise AttributeError(f"module 'render' has no attribute {name!r}")
