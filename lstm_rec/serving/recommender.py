"""Use a trained model: top-k next items for a session, for many sessions, after every click, or click by click."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lstm_rec.checkpoint import TrainedModel, load_network
from lstm_rec.data.ids import warn_unknown
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.evaluation import CHUNK_SCORES
from lstm_rec.model import Carry, PrefixStates
from lstm_rec.prior import ItemPrior, PriorScorer

log = logging.getLogger(__name__)

# Scores held at once when ranking every position of sessions: the evaluation's own chunk (16 MB of float32).
POSITION_SCORES = CHUNK_SCORES
# Sessions go through the network in blocks of exactly this many rows (padded with empty sessions), one block at a
# time. On the CPU a product's kernel, and so its rounding, depends on its number of rows: one row takes a
# matrix-vector kernel, and with AVX-512 MKL rounds a row of an 8-row product other than the same row of a 16-row one.
# With every product 8 rows high, a session's answer is the same, to the last bit, whichever sessions share its
# batch (tests/test_service_batching.py, with 1 and 2 threads).
BATCH_ROWS = 8


class Recommendations(list):
    """The top k as a list of (original item id, score).

    Attributes:
        fallback: True when the session had no known item, so the list is by training popularity.
        unknown: the ids of the session that the model does not know (skipped).
    """

    def __init__(self, pairs: list[tuple[Hashable, float]], fallback: bool, unknown: list[Hashable]) -> None:
        super().__init__(pairs)
        self.fallback = fallback
        self.unknown = unknown


@dataclass(frozen=True)
class Query:
    """One question to a Recommender: the top k after the session `items` (original ids, oldest first), without
    the session's own items when `exclude_seen`."""

    items: Sequence[Hashable]
    k: int = 20
    exclude_seen: bool = False


@dataclass
class SessionState:
    """A live session: the network's carry after its known clicks, those clicks' indices, and its latest states."""

    carry: Carry | None = None
    seen: list[int] = field(default_factory=list)
    states: PrefixStates | None = None  # after the last known click, one prefix


class Recommender:
    """Recommends next items with a trained network and the item index (and item prior) of its checkpoint."""

    def __init__(self, model: TrainedModel, device: str | torch.device = "cpu") -> None:
        """Takes `model` over: its network moves to `device`, goes to eval mode and computes repeat scores row by row
        (rowwise_repeat_scores), so that a session's answer does not depend on the rows scored beside it. A network
        that must keep training or evaluating as before should be loaded again for the Recommender."""
        self.device = torch.device(device)
        model.network.rowwise_repeat_scores = True  # a session's answer must not depend on its batch (BATCH_ROWS)
        self.scorer = PriorScorer(model.blended(), model.prior).to(self.device).eval()
        self.item_index: ItemIndex = model.item_index
        self.popularity = torch.as_tensor(model.item_index.counts, dtype=torch.float32, device=self.device)
        self.recent_weight = 0.0 if model.prior is None else model.prior.weight

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Recommender:
        """Load a checkpoint written by scripts/train.py (weights only: no code runs from the file)."""
        return cls(load_network(path), device)

    @property
    def n_items(self) -> int:
        return len(self.item_index)

    @property
    def prior(self) -> ItemPrior | None:
        return self.scorer.prior

    def set_recent_clicks(self, items: Sequence[Hashable], weight: float | None = None) -> list[Hashable]:
        """Refresh the recent-popularity prior from live traffic: from now on every item's score gets
        `weight` * log(1 + its clicks among `items`), e.g. all clicks of the last prior.hours hours.

        `weight` defaults to the model's own (`recent_weight`: the one it was trained with, else 0); 0 switches
        the prior off. Returns the ids the model does not know, which cannot count (logged as a warning).
        """
        weight = self.recent_weight if weight is None else weight
        indices, unknown = self._indices(items)
        counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=self.n_items + 1)[1:]
        self.scorer.set_prior(ItemPrior.from_counts(counts, weight))
        return unknown

    def _indices(self, items: Sequence[Hashable]) -> tuple[list[int], list[Hashable]]:
        """Known items' indices in order, and the unknown ids (logged as a warning)."""
        indices, unknown = self._lookup(items)
        return [int(i) for i in indices if i > 0], unknown

    def _lookup(self, items: Sequence[Hashable]) -> tuple[np.ndarray, list[Hashable]]:
        """The index of every item, 0 where unknown, and the unknown ids (logged as a warning)."""
        indices = self.item_index.lookup(np.asarray(list(items), dtype=object if _mixed(items) else None))
        unknown = [item for item, index in zip(items, indices, strict=True) if index == 0]
        warn_unknown(unknown, len(indices), self.item_index.ids)
        return indices, unknown

    @torch.no_grad()
    def recommend(self, items: Sequence[Hashable], k: int = 20, exclude_seen: bool = False) -> Recommendations:
        """The top k next items after the session `items` (original ids, oldest first)."""
        return self.recommend_batch([items], k, exclude_seen)[0]

    @torch.no_grad()
    def recommend_batch(
        self, sessions: Sequence[Sequence[Hashable]], k: int = 20, exclude_seen: bool = False
    ) -> list[Recommendations]:
        """The top k after each session, all sessions scored in one padded batch."""
        return self.answer([Query(items, k, exclude_seen) for items in sessions])

    @torch.no_grad()
    def answer(self, queries: Sequence[Query]) -> list[Recommendations]:
        """Each query's top k, the sessions scored BATCH_ROWS at a time; a session's answer is the same, to the last
        bit of its scores, whichever sessions share the batch (BATCH_ROWS)."""
        if not queries:
            return []
        mapped = [self._indices(query.items) for query in queries]
        sessions = [indices for indices, _ in mapped]
        starts = range(0, len(sessions), BATCH_ROWS)
        scores = torch.cat([self._block_scores(sessions[start : start + BATCH_ROWS]) for start in starts])
        scores = scores[: len(queries)]  # (B, n_items)
        known = torch.tensor([bool(indices) for indices, _ in mapped], device=self.device)
        scores = torch.where(known[:, None], scores, self.popularity)
        return [
            self._top(scores[row], query.k, indices if query.exclude_seen else [], not indices, unknown)
            for row, (query, (indices, unknown)) in enumerate(zip(queries, mapped, strict=True))
        ]

    def _block_scores(self, sessions: Sequence[Sequence[int]]) -> Tensor:
        """(BATCH_ROWS, n_items) the scores after each of at most BATCH_ROWS sessions, padded to BATCH_ROWS rows."""
        batch = self._padded([*sessions, *[[]] * (BATCH_ROWS - len(sessions))], min_length=2)  # (BATCH_ROWS, T)
        last = ((batch > 0).sum(dim=1) - 1).clamp(min=0)
        states = self.scorer.encode(batch)[torch.arange(BATCH_ROWS, device=self.device), last]  # one prefix per row
        return self.scorer.score(states).float()

    def _padded(self, sessions: Sequence[Sequence[int]], min_length: int = 1) -> Tensor:
        """(B, T) the sessions' item indices right-padded with 0, on the device; T at least `min_length` (a
        recurrent layer takes another kernel for one step than for several: a one-click session's state would
        round otherwise alone than beside a longer one)."""
        lengths = [len(indices) for indices in sessions]
        batch = torch.zeros((len(sessions), max([*lengths, min_length])), dtype=torch.long)
        for row, indices in enumerate(sessions):
            batch[row, : len(indices)] = torch.as_tensor(indices, dtype=torch.long)
        return batch.to(self.device)

    @torch.no_grad()
    def recommend_positions(
        self, items: Sequence[Hashable], k: int = 20, exclude_seen: bool = False
    ) -> list[Recommendations]:
        """The top k after every click of the session `items`: list p - 1 is recommend(items[:p], k, exclude_seen)."""
        return self.recommend_positions_batch([items], k, exclude_seen)[0]

    @torch.no_grad()
    def recommend_positions_batch(
        self, sessions: Sequence[Sequence[Hashable]], k: int = 20, exclude_seen: bool = False
    ) -> list[list[Recommendations]]:
        """For each session, the top k after each of its clicks, as recommend() on every prefix would answer.

        The sessions' known clicks go through the network once, in one padded batch (one LSTM step per click), and
        the prefixes are scored POSITION_SCORES scores at a time: time and memory linear in the clicks.
        """
        if not sessions:
            return []
        looked_up = [self._lookup(items) for items in sessions]
        known = [indices[indices > 0] for indices, _ in looked_up]
        states = self.scorer.encode(self._padded(known))  # (B, T) prefixes of the known clicks
        # Every prefix, sessions in order: its session, its clicks, and its known clicks.
        session = np.repeat(np.arange(len(sessions)), [len(indices) for indices, _ in looked_up])
        clicks = np.concatenate([np.arange(1, len(indices) + 1) for indices, _ in looked_up] + [np.zeros(0, int)])
        n_known = np.concatenate([np.cumsum(indices > 0) for indices, _ in looked_up] + [np.zeros(0, int)])
        answers: list[list[Recommendations]] = [[] for _ in sessions]
        rows = max(1, POSITION_SCORES // self.n_items)
        for begin in range(0, len(session), rows):
            part = slice(begin, begin + rows)
            scores = self._prefix_scores(states, session[part], n_known[part])
            if exclude_seen:
                scores = _without_seen(scores, session[part], n_known[part], known)
            prefixes = zip(session[part], clicks[part] - n_known[part], n_known[part], strict=True)
            for row, (owner, n_unknown, n_seen) in enumerate(prefixes):
                unknown = looked_up[owner][1][:n_unknown]  # the unknown ids among the prefix's clicks
                answers[owner].append(self._top(scores[row], k, [], bool(n_seen == 0), unknown))
        return answers

    def _prefix_scores(self, states: PrefixStates, session: np.ndarray, n_known: np.ndarray) -> Tensor:
        """(N, n_items) scores after the n_known[i] first known clicks of session[i]; popularity after none."""
        has_known = torch.as_tensor(n_known > 0, device=self.device)
        scores = self.popularity.expand(len(session), -1).clone()
        if has_known.any():
            rows = torch.as_tensor(session, device=self.device)[has_known]
            last = torch.as_tensor(n_known, device=self.device)[has_known] - 1
            scores[has_known] = self.scorer.score(states[rows, last]).float()
        return scores

    def start(self) -> SessionState:
        """A new live session with no clicks yet."""
        return SessionState()

    @torch.no_grad()
    def step(
        self, state: SessionState, item: Hashable, k: int = 20, exclude_seen: bool = False
    ) -> tuple[SessionState, Recommendations]:
        """Add one click to a live session at the cost of one LSTM step; the same ranking as recommend()."""
        indices, unknown = self._indices([item])
        if indices:
            click = torch.tensor([indices], dtype=torch.long, device=self.device)  # (1, 1)
            states, carry = self.scorer(click, state.carry)
            state = SessionState(carry, [*state.seen, indices[0]], states[:, -1])
        if not state.seen:
            return state, self._top(self.popularity, k, [], True, unknown)
        scores = self.scorer.score(state.states).float()[0]
        return state, self._top(scores, k, state.seen if exclude_seen else [], False, unknown)

    def _top(self, scores: Tensor, k: int, exclude: list[int], fallback: bool, unknown: list) -> Recommendations:
        if k < 1:
            raise ValueError(f"k must be a positive number of items, got {k}")
        if exclude:
            scores = scores.clone()
            scores[torch.tensor(exclude, device=scores.device) - 1] = float("-inf")
        top = scores.topk(min(k, self.n_items))
        ids = self.item_index.ids[top.indices.cpu().numpy()]
        values = top.values.cpu().tolist()  # at once: a 0-d tensor per score was a third of per_position's time
        pairs = [(_plain(i), s) for i, s in zip(ids.tolist(), values, strict=True) if s > float("-inf")]
        return Recommendations(pairs, fallback, unknown)


def _without_seen(scores: Tensor, session: np.ndarray, n_known: np.ndarray, known: list[np.ndarray]) -> Tensor:
    """Scores with -inf at the items among the first n_known[i] known clicks of session[i]: the items whose first
    known click comes before that. known[s] holds session s's known item indices in order."""
    sessions, local = np.unique(session, return_inverse=True)
    n_items = scores.shape[1]
    columns = np.concatenate([u * n_items + known[s] - 1 for u, s in enumerate(sessions)])
    order = np.concatenate([np.arange(len(known[s])) for s in sessions])
    never = torch.iinfo(torch.long).max
    first = torch.full((len(sessions) * n_items,), never, dtype=torch.long)
    first.scatter_reduce_(0, torch.as_tensor(columns), torch.as_tensor(order), reduce="amin")  # (U * n_items,)
    seen = first.view(len(sessions), n_items)[torch.as_tensor(local)] < torch.as_tensor(n_known)[:, None]
    return scores.masked_fill(seen.to(scores.device), float("-inf"))


def _mixed(items: Sequence[Hashable]) -> bool:
    return len({type(i) for i in items}) > 1


def _plain(value: Hashable) -> Hashable:
    """numpy scalars as Python ones, so answers serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value
