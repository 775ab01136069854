"""Single-device S2V model and pipeline; parallelism lives in parallel/, orchestration in cluster/."""

from .dit import S2VDiT, load_dit

__all__ = ["S2VDiT", "load_dit"]
