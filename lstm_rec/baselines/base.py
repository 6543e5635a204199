"""What every baseline shares: fitting on training sessions, prefix states, sparse helpers."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from lstm_rec.data.sessions import Sessions


class Baseline:
    """A session scorer fitted on training sessions; scored by the same evaluation path as the LSTM.

    The state of a prefix is the prefix itself, (N, T) item indices right-padded with 0, so a
    baseline sees exactly what the LSTM sees at every position.
    """

    n_items: int = 0

    def fit(self, sessions: Sessions, n_items: int) -> Baseline:
        raise NotImplementedError

    def encode(self, items: Tensor) -> Tensor:
        """(B, T) -> (B, T, T): state t holds items[:, :t + 1], padded with 0."""
        steps = torch.arange(items.shape[1], device=items.device)
        in_prefix = steps[None, :] <= steps[:, None]  # (T, T): prefix t covers steps 0..t
        return items[:, None, :] * in_prefix[None]  # (B, T, T)

    def score(self, states: Tensor) -> Tensor:
        """(N, T) prefixes -> (N, n_items) scores."""
        scores = np.require(self.score_prefixes(states.cpu().numpy()), np.float32, requirements="W")
        return torch.from_numpy(scores).to(states.device)

    def score_prefixes(self, prefixes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def last_items(prefixes: np.ndarray) -> np.ndarray:
    """The last real item (1-based index) of each left-aligned, zero-padded prefix."""
    lengths = (prefixes > 0).sum(axis=1)
    return prefixes[np.arange(len(prefixes)), np.maximum(lengths - 1, 0)]


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


def prefix_entries(prefixes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-padding entries of the prefixes: (row, score column, 1-based position, prefix length per row)."""
    rows, steps = np.nonzero(prefixes)
    lengths = (prefixes > 0).sum(axis=1)
    return rows, prefixes[rows, steps] - 1, steps + 1, lengths
