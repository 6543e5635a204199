"""The model a service answers with, replaced whole by a reload: the next checkpoint is loaded and checked beside the
model in service, then swapped in with one assignment, so that every request is answered by one model or the
other."""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lstm_rec.checkpoint import CheckpointError
from lstm_rec.serving.recommender import Query, Recommender


@dataclass(frozen=True)
class Served:
    """A model in service: its recommender, its version (1 at start, one more per reload) and its checkpoint file."""

    rec: Recommender
    version: int
    ckpt_path: str | None


class LiveModel:
    """Holds the model in service (`current`). A request reads `current` once and is answered by that model alone,
    even when a reload swaps in the next one meanwhile. `ckpt_path`: where `rec` came from, which a reload without a
    path loads again."""

    def __init__(self, rec: Recommender, ckpt_path: str | Path | None = None) -> None:
        self.ckpt_path = None if ckpt_path is None else str(ckpt_path)
        self.current = Served(rec, 1, self.ckpt_path)
        self._changing = threading.Lock()  # one reload or prior refresh at a time
        self._recent_clicks: tuple[list[Hashable], float | None] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> LiveModel:
        """The checkpoint at `path` in service, as version 1; reloads without a path load it again."""
        return cls(Recommender.from_checkpoint(path, device), path)

    def reload(self, path: str | Path | None = None) -> Served:
        """Load the checkpoint at `path` (None: `ckpt_path`, the first model's), check that it scores, give it the
        latest recent clicks (set_recent_clicks), and put it in service. Blocks; on any error the model in service
        stays.

        Raises:
            FileNotFoundError, CheckpointError: no usable checkpoint at `path`.
        """
        with self._changing:
            serving = self.current
            if path is None and self.ckpt_path is None:
                raise FileNotFoundError("ckpt_path: the first model was not loaded from a file: send a ckpt_path")
            path = self.ckpt_path if path is None else str(path)
            rec = Recommender.from_checkpoint(path, serving.rec.device)
            check_scores(rec, f"ckpt_path '{path}'")
            if self._recent_clicks is not None:
                rec.set_recent_clicks(*self._recent_clicks)
            self.current = Served(rec, serving.version + 1, path)  # one assignment: atomic for the readers
            return self.current

    def set_recent_clicks(self, items: Sequence[Hashable], weight: float | None) -> tuple[Recommender, list[Hashable]]:
        """Recommender.set_recent_clicks on the model in service, remembered for the models that later reloads put in
        service (with weight None, each its own). Returns that model and the ids it does not know."""
        with self._changing:
            rec = self.current.rec
            unknown = rec.set_recent_clicks(items, weight)
            self._recent_clicks = (list(items), weight)
            return rec, unknown


def check_scores(rec: Recommender, source: str) -> None:
    """A network whose weights hold NaN or infinity loads without complaint and ranks nonsense: refuse it when the
    session of the most popular item does not get a finite score for every item. Also the new model's first forward
    pass, which is slower than the next ones, so that no request waits for it."""
    probe = rec.item_index.ids[int(np.argmax(rec.item_index.counts))]
    scores = [score for _, score in rec.answer([Query([probe], k=rec.n_items)])[0]]
    if len(scores) != rec.n_items or not all(math.isfinite(score) for score in scores):
        raise CheckpointError(
            f"{source}: its network scores items NaN or infinite (weights that diverged in training?): retrain it or "
            "send another checkpoint"
        )
