"""The one evaluation path: rank the next item at every position after the first of each session."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from lstm_rec.metrics import pessimistic_ranks, ranking_metrics


class SessionScorer(Protocol):
    """Anything that scores all items after each prefix of a session: the LSTM, a baseline."""

    n_items: int

    def forward(self, items: Tensor) -> Tensor:
        """(B, T) padded item indices -> (B, T, D) one state per prefix."""

    def score(self, states: Tensor) -> Tensor:
        """(N, D) states -> (N, n_items) scores; column j is item index j + 1."""


def target_ranks(scorer: SessionScorer, batch: Tensor, max_scores: int = 2**24) -> Tensor:
    """Pessimistic rank of every next item in a padded batch of sessions.

    Args:
        batch: (B, T) item indices, right-padded with 0; padding is never a target.
        max_scores: most scores held at once; rows are scored in chunks that fit.

    Returns:
        (N,) ranks, one per (position, next item) pair, in row-major order of the batch.
    """
    inputs, targets = batch[:, :-1], batch[:, 1:]
    is_target = targets > 0  # (B, T - 1)
    states = scorer.forward(inputs)[is_target]  # (N, D)
    targets = targets[is_target] - 1  # (N,) score columns
    rows = max(1, max_scores // scorer.n_items)
    return torch.cat(
        [
            pessimistic_ranks(scorer.score(states[i : i + rows]), targets[i : i + rows])
            for i in range(0, len(targets), rows)
        ]
    )


@torch.no_grad()
def evaluate(
    scorer: SessionScorer,
    batches: Iterable[Tensor],
    ks: Sequence[int],
    prefix: str,
    device: torch.device | str = "cpu",
    max_scores: int = 2**24,
) -> dict[str, float]:
    """Metrics of `scorer` (in eval mode) over all batches, keyed like ``{prefix}recall@20``."""
    was_training = isinstance(scorer, nn.Module) and scorer.training
    if isinstance(scorer, nn.Module):
        scorer.eval()
    metrics = ranking_metrics(ks, prefix).to(device)
    for batch in batches:
        metrics.update(target_ranks(scorer, batch.to(device), max_scores))
    if was_training:
        scorer.train()
    return {name: float(value) for name, value in metrics.compute().items()}
