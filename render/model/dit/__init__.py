from render.model.dit.loader import build_dit_skeleton, load_dit
from render.model.dit.model import S2VCondition, S2VDiT

__all__ = ["S2VDiT", "S2VCondition", "load_dit", "build_dit_skeleton"]
