"""The one evaluation path: rank the next item at every position after the first of each session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from lstm_rec.metrics import item_ranks, ranking_metrics, target_ranks

# Scores ranked at once when max_scores allows more: 16 MB of float32 ranked 1.2-1.25x faster than 64 MB chunks
# on 2 CPU cores (2,933 and 36,416 items), the scores staying in cache between the product, the ranks and top-k.
CHUNK_SCORES = 2**22


@dataclass(frozen=True)
class Ranking:
    """How a choice on the validation sessions ranks its candidates (prior=auto, blend=auto): the cutoffs its metrics
    are computed at, how tied scores rank, the device, and the most item scores held in memory at once (the model's
    ks, ties, device and max_scores)."""

    ks: Sequence[int]
    ties: str = "pessimistic"
    device: torch.device | str = "cpu"
    max_scores: int = 2**24


class SessionScorer(Protocol):
    """Anything that scores all items after each prefix of a session: the network, a baseline, either with a prior.

    States are whatever the scorer needs per prefix (the network's PrefixStates, a baseline's prefix array),
    indexed like the prefixes: a boolean (B, T) mask picks N of them, a slice a run of those.
    """

    n_items: int

    def encode(self, items: Tensor) -> Any:
        """(B, T) right-padded item indices -> the states of every prefix items[:, :t + 1]."""

    def score(self, states: Any) -> Tensor:
        """N states -> (N, n_items) scores; column j is item index j + 1."""


# A scorer may also have `shared_scores`: None, or (n_items,) scores that it gives after every prefix (popularity).
# Then rank_batch ranks the items once, by one sort, instead of an (N, n_items) matrix: on retailrocket-sessions'
# test (49,665 predictions, 36,297 items), popularity took 7.0-7.8 s the slow way, 0.10 s so (docs/evaluation.md#speed).


class CatalogScorer(nn.Module):
    """A scorer of a model's own items, on a catalog that holds those items and maybe more, in any order.

    A click on an item the model does not know is a blank step (its padding row); such items score -inf, so they are
    never recommended and a target among them ranks last: a miss at every cutoff. Items the model knows and the
    catalog lacks are not scored.
    """

    def __init__(self, scorer: Any, own: Any, catalog: Any) -> None:
        """`own` and `catalog` are ItemIndex objects: the model's items, and the items the batches index."""
        super().__init__()
        self.scorer, self.n_items = scorer, len(catalog)
        own_of = torch.from_numpy(own.lookup(catalog.ids))  # (n_catalog,) the model's index, 0 where unknown
        self.register_buffer("to_own", torch.cat([torch.zeros(1, dtype=torch.long), own_of]))
        self.register_buffer("known", own_of > 0)
        self.register_buffer("own_columns", own_of[own_of > 0] - 1)
        # The model's items first, in its order, then the unknown ones (ItemIndex.grown): scores append -inf columns.
        n_own = len(own)
        self.appended = len(self.own_columns) == n_own and bool(
            torch.equal(self.own_columns, torch.arange(n_own)) and self.known[:n_own].all()
        )

    def encode(self, items: Tensor) -> Any:
        return self.scorer.encode(self.to_own[items])

    def score(self, states: Any) -> Tensor:
        return self.to_catalog(self.scorer.score(states))

    @property
    def shared_scores(self) -> Tensor | None:
        own = getattr(self.scorer, "shared_scores", None)
        return None if own is None else self.to_catalog(own[None].to(self.known.device))[0]

    def to_catalog(self, own: Tensor) -> Tensor:
        """(N, n_own) scores of the model's items -> (N, n_items) scores of the catalog's, -inf where unknown."""
        if self.appended:
            return torch.cat([own, own.new_full((len(own), self.n_items - own.shape[1]), float("-inf"))], dim=1)
        scores = own.new_full((len(own), self.n_items), float("-inf"))
        scores[:, self.known] = own[:, self.own_columns]
        return scores


@dataclass
class RankedPredictions:
    """One row per prediction: the target's rank, the top-k score columns, and where it stands."""

    ranks: Tensor  # (N,) float64
    top_items: Tensor  # (N, k_max) score columns of the best-scored items
    positions: Tensor  # (N,) 1-based position of the prediction: 1 predicts a session's 2nd click
    lengths: Tensor  # (N,) clicks in the prediction's session

    @classmethod
    def concat(cls, parts: Sequence[RankedPredictions]) -> RankedPredictions:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ranks", "top_items", "positions", "lengths")))

    def subset(self, rows: Tensor) -> RankedPredictions:
        """The predictions where the boolean mask `rows` (N,) is true."""
        return RankedPredictions(self.ranks[rows], self.top_items[rows], self.positions[rows], self.lengths[rows])


def prediction_targets(batch: Tensor) -> Tensor:
    """(N,) the score columns of a padded batch's next-item targets (padding is never one), in the order of its
    predictions: row by row, position by position, as rank_batch ranks them."""
    targets = batch[:, 1:]
    return targets[targets > 0] - 1


def prediction_layout(batch: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
    """A padded batch's inputs (B, T - 1), which of their positions predict a next item (B, T - 1), the (N,) targets'
    score columns, and where each prediction stands: its 1-based position and its session's clicks, (N,) each; the
    predictions in rank_batch's order."""
    inputs, is_target = batch[:, :-1], batch[:, 1:] > 0
    row, column = is_target.nonzero(as_tuple=True)
    lengths = (batch > 0).sum(dim=1)
    return inputs, is_target, prediction_targets(batch), (column + 1, lengths[row])


@contextlib.contextmanager
def eval_mode(scorer: SessionScorer) -> Iterator[None]:
    """`scorer` in eval mode (no dropout) within the block, and back in training mode after it if it was."""
    was_training = isinstance(scorer, nn.Module) and scorer.training
    if isinstance(scorer, nn.Module):
        scorer.eval()
    try:
        yield
    finally:
        if was_training:
            scorer.train()


def rank_batch(
    scorer: SessionScorer, batch: Tensor, k_max: int = 20, ties: str = "pessimistic", max_scores: int = 2**24
) -> RankedPredictions:
    """Rank every next item in a padded batch of sessions; padding is never a target.

    Args:
        batch: (B, T) item indices, right-padded with 0.
        k_max: length of the top lists kept for coverage and popularity bias; 0 keeps none (a choice on the
            validation sessions computes neither, and finding the top items costs more than ranking the target).
        max_scores: most scores held at once; rows are scored in chunks that fit.
    """
    return rank_batch_offsets(scorer, batch, [None], k_max, ties, max_scores)[0]


def rank_batch_offsets(
    scorer: SessionScorer,
    batch: Tensor,
    offsets: Sequence[Tensor | None],
    k_max: int = 20,
    ties: str = "pessimistic",
    max_scores: int = 2**24,
) -> list[RankedPredictions]:
    """rank_batch once per offset: the scorer's scores plus that (n_items,) offset (None: none), the network run and
    its scores computed once for all of them (choosing an item prior on the validation sessions)."""
    inputs, is_target, targets, where = prediction_layout(batch)
    offsets = [None if o is None else o.to(batch.device) for o in offsets]
    k = min(k_max, scorer.n_items)
    no_tops = None if k else targets.new_zeros(len(targets), 0)  # k_max=0: (N, 0) top lists
    shared = getattr(scorer, "shared_scores", None)
    if shared is not None:  # the same scores after every prefix: each item's rank once
        shared = shared.to(batch.device)
        ranked = []
        for offset in offsets:
            scores = shared if offset is None else shared + offset
            top = scores.topk(k).indices.expand(len(targets), -1) if k else no_tops
            ranked.append(RankedPredictions(item_ranks(scores, ties)[targets], top, *where))
        return ranked
    states = scorer.encode(inputs)[is_target]  # N states
    rows = max(1, min(max_scores, CHUNK_SCORES) // scorer.n_items)
    ranks: list[list[Tensor]] = [[] for _ in offsets]
    tops: list[list[Tensor]] = [[] for _ in offsets]
    for begin in range(0, len(targets), rows):
        base = scorer.score(states[begin : begin + rows])  # (rows, n_items)
        for i, offset in enumerate(offsets):
            scores = base if offset is None else base + offset
            ranks[i].append(target_ranks(scores, targets[begin : begin + rows], ties))
            tops[i].append(scores.topk(k, dim=1).indices if k else no_tops[begin : begin + rows])
    return [RankedPredictions(torch.cat(r), torch.cat(t), *where) for r, t in zip(ranks, tops, strict=True)]


@torch.no_grad()
def collect_ranks(
    scorer: SessionScorer,
    batches: Iterable[Tensor],
    k_max: int = 20,
    ties: str = "pessimistic",
    device: torch.device | str = "cpu",
    max_scores: int = 2**24,
) -> RankedPredictions:
    """Ranked predictions of `scorer` (in eval mode) over all batches, on the CPU."""
    return collect_ranks_offsets(scorer, batches, [None], k_max, ties, device, max_scores)[0]


@torch.no_grad()
def collect_ranks_offsets(
    scorer: SessionScorer,
    batches: Iterable[Tensor],
    offsets: Sequence[Tensor | None],
    k_max: int = 20,
    ties: str = "pessimistic",
    device: torch.device | str = "cpu",
    max_scores: int = 2**24,
) -> list[RankedPredictions]:
    """collect_ranks of the scorer's scores plus each (n_items,) offset (None: none), the scores computed once."""
    parts: list[list[RankedPredictions]] = [[] for _ in offsets]
    with eval_mode(scorer):
        for batch in batches:
            ranked_all = rank_batch_offsets(scorer, batch.to(device), offsets, k_max, ties, max_scores)
            for part, ranked in zip(parts, ranked_all, strict=True):
                part.append(RankedPredictions(*(t.cpu() for t in vars(ranked).values())))
    return [RankedPredictions.concat(part) for part in parts]


def metrics_of(
    ranked: RankedPredictions, ks: Sequence[int], prefix: str, item_counts: np.ndarray | Tensor | None = None
) -> dict[str, float]:
    """Every metric at every k, keyed like ``{prefix}recall@20``, computed in this process alone."""
    counts = None if item_counts is None else torch.as_tensor(item_counts)
    metrics = ranking_metrics(ks, prefix, counts, sync=False)
    metrics.update(ranked.ranks, ranked.top_items)
    return {name: float(value) for name, value in metrics.compute().items()}


def best_row(table: Sequence[Mapping[str, Any]], metric: str) -> int:
    """The index of the row of `table` (candidates' validation metrics, the unchanged one first) with the highest
    `metric`; ties go to the earlier row."""
    return max(range(len(table)), key=lambda i: (table[i][metric], -i))


def evaluate(
    scorer: SessionScorer,
    batches: Iterable[Tensor],
    ks: Sequence[int],
    prefix: str,
    device: torch.device | str = "cpu",
    max_scores: int = 2**24,
    ties: str = "pessimistic",
    item_counts: np.ndarray | Tensor | None = None,
) -> dict[str, float]:
    """Metrics of `scorer` over all batches; coverage and popularity bias too when `item_counts` is given."""
    ranked = collect_ranks(scorer, batches, max(ks), ties, device, max_scores)
    return metrics_of(ranked, ks, prefix, item_counts)


def breakdown(ranked: RankedPredictions, ks: Sequence[int], by: str, max_group: int = 10) -> pd.DataFrame:
    """Recall@k and MRR@k per position in the session or per session length; groups past `max_group` pooled.

    Args:
        by: "position" (1 predicts the 2nd click) or "length" (clicks in the session).
    """
    if by not in ("position", "length"):
        raise ValueError(f"breakdown is by 'position' or 'length', got {by!r}")
    values = (ranked.positions if by == "position" else ranked.lengths).numpy()
    groups = np.minimum(values, max_group)
    rows = []
    for group in np.unique(groups):
        part = ranked.subset(torch.from_numpy(groups == group))
        label = f"{group}+" if group == max_group and (values > max_group).any() else str(group)
        metrics = metrics_of(part, ks, "")
        rows.append(
            {by: label, "n_predictions": metrics["n_predictions"]}
            | {f"{name}@{k}": metrics[f"{name}@{k}"] for k in ks for name in ("recall", "mrr")}
        )
    return pd.DataFrame(rows)
