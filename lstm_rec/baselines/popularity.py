"""Popularity baselines: global click counts, and items of the session itself first."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lstm_rec.baselines.base import Baseline
from lstm_rec.baselines.prefixes import PrefixSummary
from lstm_rec.data.sessions import Sessions


class Popularity(Baseline):
    """Scores every item by its training click count, whatever the session."""

    def __init__(self, counts: np.ndarray | None = None) -> None:
        if counts is not None:
            self.counts = np.asarray(counts, dtype=np.float64)
            self.n_items = len(self.counts)

    def fit(self, sessions: Sessions, n_items: int) -> Popularity:
        self.counts = np.bincount(sessions.items - 1, minlength=n_items).astype(np.float64)
        self.n_items = n_items
        return self

    def score_summary(self, prefixes: PrefixSummary) -> np.ndarray:
        return np.broadcast_to(self.counts, (prefixes.n_prefixes, self.n_items))

    @property
    def shared_scores(self) -> Tensor:
        """The same scores after every prefix, as score gives them (float32): the evaluation ranks them once."""
        return torch.from_numpy(self.counts.astype(np.float32))


class SessionPopularity(Popularity):
    """Items already clicked in the session first, by how often; then all others by training popularity."""

    shared_scores = None  # the session's own items change the scores

    def score_summary(self, prefixes: PrefixSummary) -> np.ndarray:
        in_session = prefixes.matrix(prefixes.entries.count, self.n_items)
        # Popularity scaled into [0, 1) only breaks ties between equal session counts.
        return in_session.toarray() + self.counts / (self.counts.max() + 1.0)
