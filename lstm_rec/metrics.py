"""Next-item ranking metrics: ranks of the target item, and metrics that are pure functions of ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection


def pessimistic_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """1-based rank of each target among all items, ties counted against the target.

    rank = number of items whose score is >= the target's score, so a model that scores every
    item the same gets rank n_items, never 1. A NaN target score also gets the worst rank.

    Args:
        scores: (N, n_items) scores; column j is item index j + 1.
        targets: (N,) target columns in 0..n_items - 1.
    """
    target_scores = scores.gather(1, targets[:, None])  # (N, 1)
    ranks = (scores >= target_scores).sum(dim=1)  # (N,)
    return torch.where(target_scores[:, 0].isnan(), scores.shape[1], ranks)


class RankMetric(Metric):
    """Mean over predictions of a gain that depends only on the target's rank; sum and count states."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"cutoff k must be a positive integer, got {k}")
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def gain(self, ranks: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, ranks: Tensor) -> None:
        self.total += self.gain(ranks).sum(dtype=torch.float64)
        self.count += ranks.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class Recall(RankMetric):
    """Recall@k: share of targets ranked within k (one target per prediction, so also HitRate@k)."""

    def gain(self, ranks: Tensor) -> Tensor:
        return (ranks <= self.k).double()


class MRR(RankMetric):
    """MRR@k: 1 / rank when the rank is within k, else 0."""

    def gain(self, ranks: Tensor) -> Tensor:
        return torch.where(ranks <= self.k, 1.0 / ranks.double(), 0.0)


class NDCG(RankMetric):
    """NDCG@k with one relevant item: 1 / log2(rank + 1) within k, else 0 (the ideal DCG is 1)."""

    def gain(self, ranks: Tensor) -> Tensor:
        return torch.where(ranks <= self.k, 1.0 / torch.log2(ranks.double() + 1.0), 0.0)


class PredictionCount(Metric):
    """How many predictions were ranked."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        self.count += ranks.numel()

    def compute(self) -> Tensor:
        return self.count.double()


def ranking_metrics(ks: Sequence[int], prefix: str) -> MetricCollection:
    """Recall, MRR and NDCG at every k, plus the prediction count, keyed like ``val/mrr@20``."""
    metrics: dict[str, Metric] = {"n_predictions": PredictionCount()}
    for k in ks:
        metrics |= {f"recall@{k}": Recall(k), f"mrr@{k}": MRR(k), f"ndcg@{k}": NDCG(k)}
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
