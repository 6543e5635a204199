"""Session-based kNN (Ludewig & Jannach): score items by the training sessions most similar to the prefix."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lstm_rec.baselines.base import Baseline, keep_top_per_row, runs_within, session_item_matrix, top_entries
from lstm_rec.baselines.prefixes import PrefixSummary
from lstm_rec.data.sessions import Sessions

_POSITION_WEIGHTS = {
    "same": lambda c, length: np.ones_like(c, dtype=np.float64),
    "div": lambda c, length: c / length,
    "quadratic": lambda c, length: (c / length) ** 2,
}


class SessionKNN(Baseline):
    """SKNN: neighbours are the `sample_size` most recent training sessions sharing an item with the prefix;
    the `k` most similar by cosine (of item sets) vote for their items with their similarity.

    Recency is a training session's last click time. Items of the prefix are not excluded.
    """

    def __init__(self, k: int = 100, sample_size: int = 500) -> None:
        self.k, self.sample_size = k, sample_size

    def fit(self, sessions: Sessions, n_items: int) -> SessionKNN:
        self.n_items = n_items
        self.session_items = session_item_matrix(sessions, n_items, binary=True)  # (S, n_items)
        # (n_items, S) kept in row form: every prefix batch multiplies by it, and scipy would otherwise convert
        # session_items.T (column form) anew each time (3.8 of a retailrocket-sessions test ranking's 10 kNN seconds).
        self.item_sessions = sp.csr_matrix(self.session_items.T)
        self.items_per_session = np.asarray(self.session_items.sum(axis=1)).ravel()
        self.sessions_per_item = np.asarray(self.session_items.sum(axis=0)).ravel()
        # 0 for the most recent session (latest last click), 1 for the next, ...
        self.recency = np.argsort(np.argsort(-sessions.last_times, kind="stable"), kind="stable")
        return self

    def score_summary(self, prefixes: PrefixSummary) -> np.ndarray:
        """Scores of runs of prefixes whose (prefix, training session) pairs are no more than their scores.

        Each prefix is compared with every training session sharing an item with it (up to all of them); runs keep
        those pairs within the N * n_items scores asked for, so a long session's prefixes are compared a run at
        a time.
        """
        scores = np.empty((prefixes.n_prefixes, self.n_items))
        for run in self._runs(prefixes):
            scores[run] = self._votes(prefixes.take(run)).toarray()
        return scores

    def sparse_scores(self, prefixes: PrefixSummary) -> sp.csr_matrix:
        """The scores of score_summary as a sparse (N, n_items) matrix: only the items some neighbour votes for (the
        kNN blend adds them to the network's scores without a dense matrix)."""
        runs = [self._votes(prefixes.take(run)) for run in self._runs(prefixes)]
        return sp.csr_matrix(sp.vstack(runs, format="csr")) if runs else sp.csr_matrix((0, self.n_items))

    def _runs(self, prefixes: PrefixSummary) -> list[slice]:
        """Runs of prefixes whose (prefix, training session) pairs are no more than their N * n_items scores."""
        n_prefixes, entries = prefixes.n_prefixes, prefixes.entries
        shared = np.bincount(entries.prefix, self.sessions_per_item[entries.column], minlength=n_prefixes)
        pairs = np.minimum(shared, len(self.items_per_session))  # an upper bound of each prefix's candidates
        return runs_within(pairs, max(n_prefixes, 1) * self.n_items)

    def _query(self, prefixes: PrefixSummary) -> sp.csr_matrix:
        """(N, n_items) the prefixes as sets of items."""
        return prefixes.matrix(np.ones(len(prefixes.entries.prefix)), self.n_items)

    def _candidates(self, query: sp.csr_matrix) -> sp.csr_matrix:
        """(N, S) shared-item counts, restricted to the `sample_size` most recent sharing sessions of each row."""
        shared = sp.coo_matrix(query @ self.item_sessions)
        kept = top_entries(shared.row, -self.recency[shared.col], self.sample_size, shared.col)
        return sp.csr_matrix((shared.data[kept], (shared.row[kept], shared.col[kept])), shape=shared.shape)

    def _neighbours(self, similarity: sp.spmatrix) -> sp.csr_matrix:
        """The `k` most similar candidates of each row (ties: the more recent session)."""
        return keep_top_per_row(similarity, self.k, tiebreak=self.recency)

    def _votes(self, prefixes: PrefixSummary) -> sp.csr_matrix:
        """(N, n_items) each item's score: its neighbours' votes, sparse."""
        query = self._query(prefixes)
        distinct = np.asarray(query.sum(axis=1)).ravel()  # (N,)
        cosine = self._candidates(query).tocoo()  # shared-item counts
        cosine.data = cosine.data / np.sqrt(distinct[cosine.row] * self.items_per_session[cosine.col])
        return sp.csr_matrix(self._neighbours(cosine) @ self.session_items)


# VSKNN's distance-decayed votes are summed in a dense block when they number at least 1 / DENSE_VOTES of its
# scores (on MovieLens-100k's long sessions about 20 per score; on retailrocket-sessions' short ones about 1 in 15).
DENSE_VOTES = 8
# Distances a pass of VSKNN._steps_back sums exactly (float64 holds 53 binary places).
STEPS_BLOCK = 48


class VSKNN(SessionKNN):
    """V-SKNN (Ludewig & Jannach): SKNN whose prefix items weigh more the later they were clicked.

    - similarity "vec": the sum of the position weights of the shared items over the number of distinct
      prefix items; the weight of an item is w(c / L) at its last position c of L clicks, with w
      "quadratic" (squared), "div" (linear) or "same" (1);
    - weighting_score "div": a neighbour's vote is divided by how many clicks back (1 = the last click)
      the most recent prefix item it shares lies; "same" leaves votes as they are;
    - idf_weighting: each item's score is multiplied by 1 + idf_weighting * ln(n_sessions / clicks(item))
      (0 turns it off);
    - distance_decay d (None: off): a neighbour's vote for one of its items is multiplied by exp(-|p - m| / d),
      p the item's last position in the neighbour and m that of the prefix's most recent item the neighbour
      shares, so the items clicked near the shared one count most (the neighbour-position weight of Garg et al.'s
      STAN); None gives every item of a neighbour its whole vote.
    """

    def __init__(
        self,
        k: int = 500,
        sample_size: int = 5000,
        weighting: str = "quadratic",
        weighting_score: str = "div",
        idf_weighting: float = 5.0,
        distance_decay: float | None = None,
    ) -> None:
        super().__init__(k, sample_size)
        if weighting not in _POSITION_WEIGHTS:
            raise ValueError(f"weighting must be one of {sorted(_POSITION_WEIGHTS)}, got {weighting!r}")
        if weighting_score not in ("div", "same"):
            raise ValueError(f"weighting_score must be 'div' or 'same', got {weighting_score!r}")
        number = isinstance(distance_decay, numbers.Real) and not isinstance(distance_decay, bool)  # NumPy's too
        if distance_decay is not None and not (number and distance_decay > 0):
            raise ValueError(f"distance_decay must be > 0 (clicks) or None, got {distance_decay!r}")
        self.weighting, self.weighting_score, self.idf_weighting = weighting, weighting_score, idf_weighting
        self.distance_decay = distance_decay

    def fit(self, sessions: Sessions, n_items: int) -> VSKNN:
        super().fit(sessions, n_items)
        clicks = np.bincount(sessions.items - 1, minlength=n_items).astype(np.float64)
        with np.errstate(divide="ignore"):
            idf = np.log(sessions.n_sessions / clicks)
        self.item_factor = 1.0 + self.idf_weighting * np.where(clicks > 0, idf, 0.0)
        if self.distance_decay is not None:
            self.positions = SessionPositions.of(sessions, n_items)
        return self

    def _votes(self, prefixes: PrefixSummary) -> sp.csr_matrix:
        query = self._query(prefixes)
        last, lengths = prefixes.matrix(prefixes.entries.last, self.n_items), prefixes.lengths  # last 1-based positions
        weights = last.tocoo()
        weights.data = _POSITION_WEIGHTS[self.weighting](weights.data, lengths[weights.row].astype(np.float64))
        weighted_shared = sp.csr_matrix(weights.tocsr() @ self.item_sessions)  # (N, S)
        similarity = weighted_shared.multiply(self._candidates(query) > 0).tocoo()
        similarity.data = similarity.data / np.asarray(query.sum(axis=1)).ravel()[similarity.row]
        neighbours = self._neighbours(similarity)
        neighbours.sort_indices()
        if self.weighting_score == "div" or self.distance_decay is not None:
            back = self._steps_back(last, lengths, neighbours)
            same = np.array_equal(back.indptr, neighbours.indptr) and np.array_equal(back.indices, neighbours.indices)
            if not same:
                raise AssertionError("V-SKNN: the shared items' distances do not line up with the neighbours")
        if self.weighting_score == "div":
            neighbours.data = neighbours.data / back.data
        if self.distance_decay is None:
            votes = neighbours @ self.session_items
        else:
            votes = self._votes_by_distance(prefixes, neighbours, back)
        return sp.csr_matrix(sp.csr_matrix(votes).multiply(self.item_factor[None, :]))

    def _votes_by_distance(
        self, prefixes: PrefixSummary, neighbours: sp.csr_matrix, back: sp.csr_matrix
    ) -> sp.csr_matrix:
        """(N, n_items) the neighbours' votes, each for an item weighted by its distance in the neighbour from the
        most recent shared item (`back`: how many clicks back that item lies in the prefix, entry for entry)."""
        pairs = neighbours.tocoo()
        # the shared item: the prefix's click `back` clicks before its end, its last click in the prefix
        ends = prefixes.lengths[pairs.row] - back.data.astype(np.int64)
        shared = prefixes.clicks.items[prefixes.rows[pairs.row], ends] - 1
        table = self.positions
        shared_at = table.positions[table.find(pairs.col, shared)]
        per_pair = table.indptr[pairs.col + 1] - table.indptr[pairs.col]
        # Distances are whole clicks: the decay of each, looked up rather than exponentiated entry by entry.
        decay = np.exp(-np.arange(table.longest + 1) / self.distance_decay)
        shape = (prefixes.n_prefixes, self.n_items)
        # Many votes per score (long neighbour sessions over a small catalog) are summed into a dense (N, n_items)
        # block, at most the N * n_items scores a run of prefixes is allowed (SessionKNN._runs): far faster than
        # sorting them. Few (short sessions over a large catalog) stay sparse, where the dense block would cost more.
        dense = DENSE_VOTES * per_pair.sum() >= shape[0] * shape[1]
        votes = np.zeros(shape[0] * shape[1] if dense else 0)
        rows, columns, values = [], [], []
        for run in runs_within(per_pair, 1 << 22):  # at most about 4M (pair, item) entries at a time
            counts = per_pair[run]
            starts = table.indptr[pairs.col[run]]
            entry = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
            distance = np.abs(table.positions[entry] - np.repeat(shared_at[run], counts))
            value = np.repeat(pairs.data[run], counts) * decay[distance]
            if dense:
                np.add.at(votes, np.repeat(pairs.row[run] * shape[1], counts) + table.columns[entry], value)
            else:
                rows.append(np.repeat(pairs.row[run], counts))
                columns.append(table.columns[entry])
                values.append(value)
        if dense:
            return sp.csr_matrix(votes.reshape(shape))
        if not rows:
            return sp.csr_matrix(shape)
        return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=shape)

    def _steps_back(self, last: sp.csr_matrix, lengths: np.ndarray, neighbours: sp.csr_matrix) -> sp.csr_matrix:
        """For each (prefix, neighbour) pair, how many clicks back the most recent shared item lies.

        Distances are taken in blocks of STEPS_BLOCK: within a block starting after distance b, every prefix item
        at distance r adds 2^-(r - b) to the sessions holding it; the sum lies in [2^-m, 2^(1 - m)) for the nearest
        shared item at b + m, so m = ceil(-log2(sum)). A block's powers span at most 48 binary places, so their sums
        are exact in float64 (one sum over a prefix of more than 53 distinct items would round up to the next power
        of two, one click too near, or to 1: distance 0). The pairs still without a shared item go on to the next
        block; prefixes of at most STEPS_BLOCK distinct items take one.
        """
        distance = last.tocoo()
        steps = lengths[distance.row] - distance.data + 1.0  # 1 = the last click
        pending = (neighbours > 0).astype(np.float64).tocsr()
        found = []
        start, farthest = 0, steps.max(initial=0.0)
        while pending.nnz and start < farthest:
            block = (steps > start) & (steps <= start + STEPS_BLOCK)
            weights = sp.csr_matrix(
                (np.exp2(start - steps[block]), (distance.row[block], distance.col[block])), shape=last.shape
            )
            sums = sp.csr_matrix(weights @ self.item_sessions).multiply(pending).tocsr()
            sums.eliminate_zeros()
            sums.data = np.ceil(-np.log2(sums.data)) + start
            found.append(sums)
            pending = (pending - pending.multiply(sums > 0)).tocsr()
            pending.eliminate_zeros()
            start += STEPS_BLOCK
        back = sum(found[1:], found[0]).tocsr() if found else sp.csr_matrix(neighbours.shape)
        back.sort_indices()
        return back


@dataclass
class SessionPositions:
    """Each training session's distinct items with the 1-based position of each one's last click, session by
    session, items ascending within a session."""

    indptr: np.ndarray  # (S + 1,) each session's first entry
    columns: np.ndarray  # the items' score columns
    positions: np.ndarray  # their last positions, int64
    keys: np.ndarray  # session * n_items + column, ascending
    n_items: int
    longest: int  # the longest session's length

    @classmethod
    def of(cls, sessions: Sessions, n_items: int) -> SessionPositions:
        rows = np.repeat(np.arange(sessions.n_sessions, dtype=np.int64), sessions.lengths)
        positions = np.arange(sessions.n_events) - np.repeat(sessions.offsets[:-1], sessions.lengths) + 1
        keys = rows * n_items + (sessions.items - 1)
        order = np.lexsort((positions, keys))  # by key, then position: a key's last entry holds its last click
        keys, positions = keys[order], positions[order]
        last = np.r_[keys[1:] != keys[:-1], True][: len(keys)]
        keys = keys[last]
        indptr = np.searchsorted(keys // n_items, np.arange(sessions.n_sessions + 1))
        longest = int(sessions.lengths.max(initial=0))
        return cls(indptr, keys % n_items, positions[last].astype(np.int64), keys, n_items, longest)

    def find(self, sessions: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The entries of (session, column) pairs, each of which the sessions hold."""
        return np.searchsorted(self.keys, sessions.astype(np.int64) * self.n_items + columns)
