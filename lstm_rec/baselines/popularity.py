"""Popularity baselines: global click counts, and items of the session itself first."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lstm_rec.baselines.base import Baseline, prefix_entries
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

    def score_prefixes(self, prefixes: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(prefixes), self.n_items))


class SessionPopularity(Popularity):
    """Items already clicked in the session first, by how often; then all others by training popularity."""

    def score_prefixes(self, prefixes: np.ndarray) -> np.ndarray:
        rows, columns, _, _ = prefix_entries(prefixes)
        in_session = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(prefixes), self.n_items))
        # Popularity scaled into [0, 1) only breaks ties between equal session counts.
        return in_session.toarray() + self.counts / (self.counts.max() + 1.0)
