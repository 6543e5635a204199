"""What every baseline shares: fitting on training sessions, prefix states, sparse helpers."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from lstm_rec.baselines.prefixes import Prefixes, PrefixSummary
from lstm_rec.data.sessions import Sessions


class Baseline:
    """A session scorer fitted on training sessions; scored by the same evaluation path as the LSTM.

    The states of a batch are its prefixes by reference (Prefixes), so a baseline sees exactly what the LSTM
    sees at every position, in memory linear in the clicks; scoring N of them reads their summary (distinct
    items, length, last item), at most N * n_items entries.
    """

    n_items: int = 0

    def fit(self, sessions: Sessions, n_items: int) -> Baseline:
        raise NotImplementedError

    def encode(self, items: Tensor) -> Prefixes:
        """(B, T) right-padded item indices -> (B, T) states: state t is the prefix items[:, :t + 1]."""
        return Prefixes.of(items)

    def score(self, states: Prefixes) -> Tensor:
        """States (*prefixes) -> (*prefixes, n_items) scores."""
        scores = np.require(self.score_summary(states.summary()), np.float32, requirements="W")
        return torch.from_numpy(scores).view(*states.rows.shape, self.n_items).to(states.device)

    def score_prefixes(self, prefixes: np.ndarray) -> np.ndarray:
        """(N, T) prefixes, one per row, left-aligned and padded with 0 -> (N, n_items) scores."""
        items = torch.as_tensor(np.asarray(prefixes, dtype=np.int64))
        last = ((items > 0).sum(dim=1) - 1).clamp(min=0)
        return self.score_summary(self.encode(items)[torch.arange(len(items)), last].summary())

    def score_summary(self, prefixes: PrefixSummary) -> np.ndarray:
        """(N, n_items) scores of the summarised prefixes."""
        raise NotImplementedError


def runs_within(costs: np.ndarray, budget: float) -> list[slice]:
    """Consecutive runs of items whose costs sum to at most `budget` (an item over it runs alone)."""
    total = np.cumsum(costs)
    runs, begin = [], 0
    while begin < len(costs):
        spent = total[begin - 1] if begin else 0.0
        end = max(int(np.searchsorted(total, spent + budget, side="right")), begin + 1)
        runs.append(slice(begin, end))
        begin = end
    return runs


def session_item_matrix(sessions: Sessions, n_items: int, binary: bool) -> sp.csr_matrix:
    """(n_sessions, n_items) clicks of each item in each session, or 1 where it was clicked at all."""
    rows = np.repeat(np.arange(sessions.n_sessions), sessions.lengths)
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, sessions.items - 1)), shape=(sessions.n_sessions, n_items))
    matrix.sum_duplicates()
    if binary:
        matrix.data[:] = 1.0
    return matrix


def top_entries(rows: np.ndarray, keys: np.ndarray, n: int, tiebreak: np.ndarray) -> np.ndarray:
    """Indices of the `n` entries with the largest `keys` within each row; ties go to the smaller `tiebreak`."""
    order = np.lexsort((tiebreak, -keys, rows))
    sorted_rows = rows[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    return order[rank < n]


def keep_top_per_row(matrix: sp.spmatrix, n: int, tiebreak: np.ndarray | None = None) -> sp.csr_matrix:
    """Keep the `n` largest entries of each row; ties go to the smaller tiebreak[column], else column."""
    coo = sp.coo_matrix(matrix)
    kept = top_entries(coo.row, coo.data, n, coo.col if tiebreak is None else tiebreak[coo.col])
    return sp.csr_matrix((coo.data[kept], (coo.row[kept], coo.col[kept])), shape=coo.shape)
