"""Shot preparation outside the render groups: prompt embeddings and audio features.

One ``PrepWorker`` actor (CPU) embeds every unique prompt once (umT5, then released) and
computes each shot's wav2vec features, writing both into the run directory, in the order the
scheduler will need them. The render groups never load the text encoder or wav2vec, and this
work overlaps the groups' sampling.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import torch

from cluster.ledger import RunDir
from cluster.settings import RunSettings
from render.media.atomic import atomic_write_bytes
from render.shot.condition import shot_prompts

log = logging.getLogger(__name__)


def save_obj(path: Any, obj: Any) -> None:
    """torch.save to memory, then an atomic durable write (loaded with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class PrepWorker:
    """Wrapped with ``ray.remote`` by the driver."""

    def __init__(self, run_dir: str, settings: dict[str, Any], cpu_threads: int = 1,
                 text_encoder_device: str = "cpu"):
        torch.set_num_threads(max(1, cpu_threads))
        self.run = RunDir(run_dir)
        self.settings = RunSettings.from_dict(settings)
        # "cpu" (default): umT5 stays loaded in host memory for the actor's later chunks. A GPU:
        # umT5 (10.6 GiB in bf16) is loaded for each chunk's prompts and released right after
        # encoding, so it shares the card with the render group's DiT only for seconds; worth it
        # where the CPU encode is what the first segment waits for (see EngineOptions).
        self.text_encoder_device = text_encoder_device
        if text_encoder_device != "cpu":  # this actor may join a cluster that did not inherit the driver's env
            from render.model.out_of_memory import prefer_expandable_segments

            prefer_expandable_segments()
        self._encoder = None
        self._pipe = None

    def _text_encoder(self) -> Any:
        if self._encoder is None:
            from pathlib import Path

            from render.model.checkpoint import DiTConfig
            from render.model.components import T5_FILE, TOKENIZER_DIR
            from render.model.text_encoder import load_text_encoder

            ckpt = Path(self.settings.ckpt)
            text_len = DiTConfig.from_json(ckpt / "config.json").text_len
            dtype = getattr(torch, self.settings.text_encoder_dtype)
            self._encoder = load_text_encoder(ckpt / T5_FILE, ckpt / TOKENIZER_DIR, device=self.text_encoder_device,
                                              dtype=dtype, text_len=text_len)
        return self._encoder

    def _embed(self, texts: list[str]) -> None:
        try:
            for text, emb in zip(texts, self._text_encoder().encode(texts)):
                save_obj(self.run.prompt_file(text), emb.float().cpu().contiguous())
        finally:
            if self.text_encoder_device != "cpu":  # never left on the render group's card
                self.release_text_encoder()
        log.info("embedded %d prompts on %s", len(texts), self.text_encoder_device)

    def prepare(self, shots: list[Any], plans: list[dict[str, Any]]) -> dict[str, str | None]:
        """Embed the shots' missing prompts and compute their missing features.

        Returns {shot_id: None when ready, else the error} so one bad shot fails alone."""
        from cluster.shot_work import compute_features
        from render.model.components import S2VModels
        from render.shot.plan import ShotPlan

        todo = sorted({p for s in shots for p in shot_prompts(s.prompt, s.negative_prompt) if not self.run.prompt_file(p).is_file()})
        if todo:
            self._embed(todo)
        outcome: dict[str, str | None] = {}
        for shot, raw_plan in zip(shots, plans):
            plan = ShotPlan.from_dict(raw_plan)
            try:
                for seg in plan.segments:
                    path = self.run.features_file(shot.shot_id, seg.index)
                    if not path.is_file():
                        if self._pipe is None:
                            self._pipe = S2VModels(self.settings.ckpt, device="cpu")
                        save_obj(path, compute_features(self._pipe, shot, plan, seg.index))
                outcome[shot.shot_id] = None
            except Exception as exc:  # reported per shot; the others of the chunk go on
                log.exception("features of shot %s failed", shot.shot_id)
                outcome[shot.shot_id] = f"{type(exc).__name__}: {exc}"
        return outcome

    def release_text_encoder(self) -> None:
        if self._encoder is not None:
            self._encoder.release()
            self._encoder = None
