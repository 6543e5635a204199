"""Next-item ranking metrics: ranks of the target item, and metrics computed from ranks and top-k lists."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

TIE_POLICIES = ("pessimistic", "optimistic", "mean")


def target_ranks(scores: Tensor, targets: Tensor, ties: str = "pessimistic") -> Tensor:
    """1-based rank of each target among all items, under a tie policy.

    With g items scoring strictly above the target and e items (the target included) scoring equal:
    pessimistic rank = g + e (the reference protocol: scoring every item equally gives rank n_items),
    optimistic rank = g + 1, mean rank = g + (e + 1) / 2 (the mean position within the tied block).
    A NaN target score gets the worst rank, n_items.

    Args:
        scores: (N, n_items) scores; column j is item index j + 1.
        targets: (N,) target columns in 0..n_items - 1.

    Returns:
        (N,) float64 ranks (whole numbers except for the mean policy).
    """
    if ties not in TIE_POLICIES:
        raise ValueError(f"tie policy must be one of {TIE_POLICIES}, got {ties!r}")
    target_scores = scores.gather(1, targets[:, None])  # (N, 1)
    # One pass over the scores for the reference protocol: g + e is the count of scores >= the target's.
    if ties == "pessimistic":
        ranks = (scores >= target_scores).sum(dim=1, dtype=torch.int32).double()  # (N,)
    else:
        greater = (scores > target_scores).sum(dim=1, dtype=torch.int32).double()
        if ties == "optimistic":
            ranks = greater + 1
        else:
            ranks = greater + ((scores == target_scores).sum(dim=1, dtype=torch.int32).double() + 1) / 2
    return torch.where(target_scores[:, 0].isnan(), float(scores.shape[1]), ranks)


def item_ranks(scores: Tensor, ties: str = "pessimistic") -> Tensor:
    """(n_items,) float64: the rank target_ranks gives each item as the target when every prediction has the same
    `scores` (n_items,), e.g. popularity. From one sort: g items above and e equal (the item included) are counted by
    two binary searches, and the tie policy is target_ranks'. A NaN score gets the worst rank, n_items; NaN items never
    count as above or equal, as in target_ranks' comparisons."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"tie policy must be one of {TIE_POLICIES}, got {ties!r}")
    ordered = scores[~scores.isnan()].sort().values
    below = torch.searchsorted(ordered, scores, side="left")  # scores strictly below each item's
    not_above = torch.searchsorted(ordered, scores, side="right")
    greater, equal = (len(ordered) - not_above).double(), (not_above - below).double()
    ranks = {"pessimistic": greater + equal, "optimistic": greater + 1, "mean": greater + (equal + 1) / 2}[ties]
    return torch.where(scores.isnan(), float(len(scores)), ranks)


class MeanMetric(Metric):
    """Mean over predictions of a per-prediction value; sum and count states, so exact across batches and devices."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"cutoff k must be a positive integer, got {k}")
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def value(self, ranks: Tensor, top_items: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, ranks: Tensor, top_items: Tensor) -> None:
        self.total += self.value(ranks, top_items).sum(dtype=torch.float64)
        self.count += ranks.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class Recall(MeanMetric):
    """Recall@k: share of targets ranked within k (one target per prediction, so also HitRate@k)."""

    def value(self, ranks: Tensor, top_items: Tensor) -> Tensor:
        return (ranks <= self.k).double()


class MRR(MeanMetric):
    """MRR@k: 1 / rank when the rank is within k, else 0."""

    def value(self, ranks: Tensor, top_items: Tensor) -> Tensor:
        return torch.where(ranks <= self.k, 1.0 / ranks.double(), 0.0)


class NDCG(MeanMetric):
    """NDCG@k with one relevant item: 1 / log2(rank + 1) within k, else 0 (the ideal DCG is 1)."""

    def value(self, ranks: Tensor, top_items: Tensor) -> Tensor:
        return torch.where(ranks <= self.k, 1.0 / torch.log2(ranks.double() + 1.0), 0.0)


class PopularityBias(MeanMetric):
    """Popularity bias@k: mean training popularity (clicks / the top item's clicks) of the k recommended items."""

    higher_is_better = False

    def __init__(self, k: int, popularity: Tensor, **kwargs) -> None:
        super().__init__(k, **kwargs)
        self.register_buffer("popularity", popularity.double() / popularity.max(), persistent=False)

    def value(self, ranks: Tensor, top_items: Tensor) -> Tensor:
        return self.popularity[top_items[:, : self.k]].mean(dim=1)


class Coverage(Metric):
    """Item coverage@k: share of the catalog that appears in at least one top-k list."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, n_items: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.add_state("recommended", torch.zeros(n_items, dtype=torch.int32), dist_reduce_fx="max")

    def update(self, ranks: Tensor, top_items: Tensor) -> None:
        self.recommended[top_items[:, : self.k].flatten()] = 1

    def compute(self) -> Tensor:
        return self.recommended.double().mean()


class PredictionCount(Metric):
    """How many predictions were ranked."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ranks: Tensor, top_items: Tensor) -> None:
        self.count += ranks.numel()

    def compute(self) -> Tensor:
        return self.count.double()


def ranking_metrics(
    ks: Sequence[int], prefix: str, item_counts: Tensor | None = None, sync: bool = True
) -> MetricCollection:
    """Recall, MRR and NDCG at every k, the prediction count and, given training click counts,
    coverage and popularity bias; keyed like ``val/mrr@20``. Update with (ranks, top_items).

    With `sync`, computing sums the states of all processes of a distributed run; without, it
    stays in this process (one process evaluating everything alone).
    """
    options = {"sync_on_compute": sync}
    metrics: dict[str, Metric] = {"n_predictions": PredictionCount(**options)}
    for k in ks:
        metrics |= {f"recall@{k}": Recall(k, **options), f"mrr@{k}": MRR(k, **options), f"ndcg@{k}": NDCG(k, **options)}
        if item_counts is not None:
            counts = torch.as_tensor(item_counts)
            metrics |= {
                f"coverage@{k}": Coverage(k, len(counts), **options),
                f"popularity_bias@{k}": PopularityBias(k, counts, **options),
            }
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
