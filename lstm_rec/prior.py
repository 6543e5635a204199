"""The recent-popularity prior: a re-ranker that adds to every item's score, at inference only, how much it was
clicked at the end of training. A network trained over the whole period cannot know what is in fashion then."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lstm_rec.data.sessions import NoClickTimesError, Sessions, recent_item_counts
from lstm_rec.evaluation import Ranking, best_row, collect_ranks_offsets, metrics_of

log = logging.getLogger(__name__)


@dataclass
class ItemPrior:
    """A fixed score per item, added at inference: `weight` * log(1 + recent clicks).

    Attributes:
        scores: (n_items,) float32; column j is item index j + 1.
        weight: the weight it was made with, the default when it is refreshed from live clicks.
        hours: the window of training time it counts (None when it came from live clicks).
    """

    scores: Tensor
    weight: float
    hours: float | None = None

    @classmethod
    def from_counts(cls, counts: np.ndarray, weight: float, hours: float | None = None) -> ItemPrior:
        if not weight >= 0:
            raise ValueError(f"the prior's weight must be >= 0 (0: no prior), got {weight!r}")
        return cls(torch.as_tensor(weight * np.log1p(counts), dtype=torch.float32), float(weight), hours)

    def to_checkpoint(self) -> dict[str, Any]:
        return {"scores": self.scores.cpu(), "weight": self.weight, "hours": self.hours}

    @classmethod
    def from_checkpoint(cls, entry: dict[str, Any] | None) -> ItemPrior | None:
        return None if entry is None else cls(entry["scores"].float(), float(entry["weight"]), entry.get("hours"))


class RecentPopularity:
    """Makes the prior from the clicks in the training sessions that began in the last `hours` hours of the
    training data (up to its latest click), weighted `weight` (the prior config group)."""

    def __init__(self, weight: float = 0.075, hours: float = 8.0) -> None:
        if not weight >= 0:
            raise ValueError(f"prior.weight must be a weight >= 0 (0: no prior), got {weight!r}")
        if not hours > 0:
            raise ValueError(f"prior.hours must be a positive number of hours, got {hours!r}")
        self.weight, self.hours = weight, hours

    def fit(self, sessions: Sessions | Sequence[Sessions], n_items: int) -> ItemPrior:
        """The prior of `sessions` (several, with items numbered alike, count as one log) over `n_items` items."""
        try:
            counts, n_sessions = recent_item_counts(sessions, n_items, self.hours * 3600.0)
        except NoClickTimesError as error:
            raise NoClickTimesError(
                "the recent-popularity prior (prior=recent_popularity) needs the training sessions' click times; "
                "switch it off with ~prior on the command line for data without them"
            ) from error
        log.info(
            "recent-popularity prior: %d clicks on %d items in the %d training sessions of the last %g hours, "
            "weight %g",
            counts.sum(),
            np.count_nonzero(counts),
            n_sessions,
            self.hours,
            self.weight,
        )
        return ItemPrior.from_counts(counts, self.weight, self.hours)


class PriorScorer(nn.Module):
    """A scorer (the network, or a baseline) whose scores get an item prior added; without a prior, its scores.

    The prior lives in the buffer `prior_scores`. Setting a prior swaps in a new tensor rather than copying into
    the old one, so scoring that runs meanwhile in another thread (a service) sees the whole old prior or the
    whole new one.
    """

    def __init__(self, scorer: Any, prior: ItemPrior | None = None) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("prior_scores", None, persistent=False)
        self.prior: ItemPrior | None = None
        self.set_prior(prior)

    @property
    def n_items(self) -> int:
        return self.scorer.n_items

    def set_prior(self, prior: ItemPrior | None) -> None:
        if prior is not None and prior.scores.shape != (self.n_items,):
            raise ValueError(f"the prior needs one score per item ({self.n_items}), got {tuple(prior.scores.shape)}")
        device = self.prior_scores.device if self.prior_scores is not None else _device_of(self.scorer)
        self.prior_scores = None if prior is None else prior.scores.to(device)
        self.prior = prior

    def encode(self, items: Tensor) -> Any:
        return self.scorer.encode(items)

    def forward(self, items: Tensor, carry: Any = None) -> Any:
        return self.scorer(items, carry)

    def score(self, states: Any) -> Tensor:
        scores = self.scorer.score(states)
        prior = self.prior_scores
        return scores if prior is None else scores + prior


def _device_of(scorer: Any) -> torch.device:
    parameter = next(scorer.parameters(), None) if isinstance(scorer, nn.Module) else None
    return torch.device("cpu") if parameter is None else parameter.device


class RecentPopularitySearch:
    """prior=auto: the recent-popularity prior whose (weight, hours) rank the validation sessions best, or none.

    Chosen after training, on the tested network and the validation sessions split off the training data (its newest
    sessions, which follow the rest in time as a test set follows data.train): each candidate prior is made from the
    clicks of the training sessions that began in its last `hours` hours, the network's scores are computed once, and
    the candidate (no prior among them) with the best validation metric wins. Whether the prior pays depends on the log
    (how fast its fashions turn over, how the test follows the training data), so it is measured, not assumed.
    """

    def __init__(self, weights: Sequence[float] = (0.05, 0.1, 0.2), hours: Sequence[float] = (8.0, 24.0, 72.0)) -> None:
        if not weights or any(not w > 0 for w in weights):
            raise ValueError(f"prior.weights must be a non-empty list of weights > 0, got {list(weights)!r}")
        if not hours or any(not h > 0 for h in hours):
            raise ValueError(f"prior.hours must be a non-empty list of positive hours, got {list(hours)!r}")
        self.weights, self.hours = [float(w) for w in weights], [float(h) for h in hours]

    def choose(
        self,
        scorer: Any,
        sessions: Sessions,
        n_items: int,
        batches: Iterable[Tensor],
        metric: str,
        ranking: Ranking,
    ) -> tuple[ItemPrior | None, list[dict[str, float]]]:
        """The best candidate's prior (None: no prior ranked best) and every candidate's validation metrics (weight 0
        is no prior), by `metric` (a key such as "val/mrr@20"). `scorer` scores the `n_items` items of `sessions`
        without a prior; `batches` are the validation sessions'."""
        candidates: list[ItemPrior | None] = [None]
        for hours in self.hours:
            counts, _ = recent_item_counts(sessions, n_items, hours * 3600.0)
            candidates += [ItemPrior.from_counts(counts, weight, hours) for weight in self.weights]
        offsets = [None if c is None else c.scores for c in candidates]
        ks, device = ranking.ks, ranking.device
        # Recall, MRR and NDCG need only the target's rank: no top lists (k_max 0), which cost more than the ranks.
        ranked = collect_ranks_offsets(scorer, batches, offsets, 0, ranking.ties, device, ranking.max_scores)
        table = []
        for candidate, predictions in zip(candidates, ranked, strict=True):
            values = metrics_of(predictions, ks, "val/")
            weight, hours = (0.0, 0.0) if candidate is None else (candidate.weight, candidate.hours)
            table.append({"weight": weight, "hours": hours} | {k: values[k] for k in sorted(values)})
        best = best_row(table, metric)  # ties: the earlier, no prior first
        return candidates[best], table
