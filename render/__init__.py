"""Single-device S2V model and pipeline (no torch.distributed, no Ray in here)."""

from .dit import S2VDiT, load_dit

__all__ = ["S2VDiT", "load_dit"]
