"""Training losses over next-item targets: full softmax, sampled softmax with logQ correction, BPR-max."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("cross_entropy", "sampled_softmax", "bpr_max")


class PopularitySampler(nn.Module):
    """Draws extra negatives with probability proportional to popularity ** alpha (alpha 0: uniform)."""

    def __init__(self, counts: Tensor, alpha: float) -> None:
        super().__init__()
        weights = counts.double().clamp(min=1.0) ** alpha
        self.register_buffer("probabilities", (weights / weights.sum()).float(), persistent=False)
        frequency = counts.double().clamp(min=1.0)
        self.register_buffer("frequency", (frequency / frequency.sum()).float(), persistent=False)

    def forward(self, n: int) -> Tensor:
        return torch.multinomial(self.probabilities, n, replacement=True)  # (n,) score columns


class Candidates(NamedTuple):
    """The score columns a mini-batch shares, and the proposals behind them.

    A mini-batch proposes N + M candidates: its N targets, then M sampled negatives. Popular items come
    up many times, so the scores can be computed once per distinct item (`columns`), each proposal being a
    copy of one column (`copies`); the losses weigh a column by its copies, which gives exactly the loss
    over all N + M proposals at a fraction of the cost. Columns may also repeat items (one per proposal).

    The N rows may also be every position of a padded batch (`real` marks the true targets), which spares
    an accelerator the host sync that picking the true rows out would cost: padding proposals then weigh
    nothing as negatives and padding rows add nothing to the losses.

    Attributes:
        columns: (C,) the score columns: the distinct items, sorted, or one per proposal.
        copies: (N + M,) the position in `columns` of each proposal: the N targets first, then the M draws.
        log_q: (N + M,) the log probability with which each proposal was made: targets arrive with their
            data frequency, extra negatives with the sampler's law.
        real: None when every row is a true target; else (N + M,) False at the padding rows' proposals.
    """

    columns: Tensor
    copies: Tensor
    log_q: Tensor
    real: Tensor | None = None

    def positives(self, n_targets: int) -> Tensor:
        """(N,) the column of each row's own target."""
        return self.copies[:n_targets]

    def own(self, n_targets: int) -> Tensor:
        """(N, C) True at every column holding the row's own item."""
        return self.columns[None, :] == self.columns[self.positives(n_targets)][:, None]

    def log_weights(self, log_copy_weights: Tensor) -> Tensor:
        """(C,) log of the summed weights (given as logs, one per proposal) of each column's copies; padding
        proposals weigh 0, so a column of padding only gets -inf."""
        weights = log_copy_weights.exp()
        if self.real is not None:
            weights = torch.where(self.real, weights, 0.0)
        totals = log_copy_weights.new_zeros(len(self.columns)).index_add_(0, self.copies, weights)
        return totals.log()

    def row_mean(self, values: Tensor) -> Tensor:
        """The mean of per-row `values` (..., N) over the true rows (all rows when `real` is None)."""
        if self.real is None:
            return values.mean()
        real = self.real[: values.shape[-1]]
        total = torch.where(real, values, 0.0).sum()
        return total / (real.sum() * (values.numel() // values.shape[-1])).clamp(min=1)


def shared_candidates(
    targets: Tensor, extra: Tensor, log_q: Tensor, distinct: bool = True, real: Tensor | None = None
) -> Candidates:
    """Candidates from `targets` (N,) and `extra` (M,) negatives, with `log_q` (N + M,) per proposal.

    Args:
        distinct: one column per distinct item. Otherwise one column per proposal, which gives the same
            losses: torch.unique makes the host wait for an accelerator (its output size depends on the
            data), so the training step keeps every proposal there.
        real: None, or (N,) False at rows that are padding (their `targets` are then ignored); needs
            distinct=False.
    """
    proposals = torch.cat([targets, extra])
    if real is not None:
        if distinct:
            raise ValueError("padding rows (real=...) need one column per proposal (distinct=False)")
        real = torch.cat([real, real.new_ones(len(extra))])
    if not distinct:
        return Candidates(proposals, torch.arange(len(proposals), device=proposals.device), log_q, real)
    columns, copies = torch.unique(proposals, sorted=True, return_inverse=True)
    return Candidates(columns, copies, log_q)


def sampled_candidates(
    targets: Tensor, sampler: PopularitySampler, n_extra: int, distinct: bool = True, real: Tensor | None = None
) -> Candidates:
    """Candidates shared by the mini-batch: its targets, then `n_extra` popularity^alpha draws; rows that are
    padding (False in `real`, see shared_candidates) propose nothing."""
    extra = sampler(n_extra) if n_extra > 0 else targets.new_zeros(0)
    target_log_q = sampler.frequency[targets if real is None else targets.clamp(min=0)].log()
    log_q = torch.cat([target_log_q, sampler.probabilities[extra].log()])
    return shared_candidates(targets, extra, log_q, distinct, real)


def sampled_softmax_loss(scores: Tensor, candidates: Candidates, logq: float) -> Tensor:
    """Cross-entropy over shared candidates: row i's positive is its own target, its negatives every other
    proposal (other copies of its own item are not negatives).

    logQ correction subtracts logq * log q(proposal) from the score of every proposal, so items proposed
    more often are not over-penalised as negatives (Yi et al., RecSys 2019). A column proposed k times
    counts as k negatives, each with its own correction.

    Args:
        scores: (N, C) scores of each row's state against every column, or (M, N, C) for M scorers of the
            same rows (ensemble members); the loss is the mean over all M * N rows.
    """
    n = scores.shape[-2]
    positives = _row_positives(scores, candidates)  # (..., N, 1)
    # No column of a row's own item is a negative; its own copy is its positive, with its own correction.
    logits = scores + candidates.log_weights(-logq * candidates.log_q)
    logits = logits.masked_fill(candidates.own(n), float("-inf"))
    positive = scores.gather(-1, positives) - logq * candidates.log_q[:n, None]
    logits = logits.scatter(-1, positives, positive)
    if candidates.real is None:
        return F.cross_entropy(logits.flatten(0, -2), positives.flatten())
    per_row = F.cross_entropy(logits.flatten(0, -2), positives.flatten(), reduction="none")
    return candidates.row_mean(per_row.view(scores.shape[:-1]))


def bpr_max_loss(scores: Tensor, candidates: Candidates, bpreg: float) -> Tensor:
    """BPR-max (Hidasi & Karatzoglou, CIKM 2018): -log sum_j s_j sigmoid(r_pos - r_j) + bpreg sum_j s_j r_j^2,
    with s the softmax of the negative scores r_j; the negatives of row i are all proposals but its own
    item, and a column proposed k times counts k times.

    Args:
        scores: (N, C) scores of each row's state against every column, or (M, N, C) for M scorers of the
            same rows (ensemble members); the loss is the mean over all M * N rows.
    """
    positive = scores.gather(-1, _row_positives(scores, candidates))  # (..., N, 1)
    own = candidates.own(scores.shape[-2])
    log_counts = candidates.log_weights(torch.zeros_like(candidates.log_q))  # (C,) log of the copy counts
    weights = torch.softmax((scores + log_counts).masked_fill(own, float("-inf")), dim=-1)  # (..., N, C); 0 if own
    # Own columns have weight 0, so their (finite) terms drop out without masking the scores again.
    ranking = (weights * torch.sigmoid(positive - scores)).sum(dim=-1)
    regulariser = (weights * scores.square()).sum(dim=-1)
    return candidates.row_mean(-torch.log(ranking + 1e-24) + bpreg * regulariser)


def _row_positives(scores: Tensor, candidates: Candidates) -> Tensor:
    """(..., N, 1) the column of each row's own target, for gathering from `scores` (..., N, C)."""
    return candidates.positives(scores.shape[-2]).expand(scores.shape[:-1]).unsqueeze(-1)


def later_items_loss(
    log_probs: Tensor, target_columns: Tensor, is_target: Tensor, columns: Tensor | None = None, dense: bool = False
) -> Tensor:
    """Cross-entropy of each row against the items its session clicks after its next one: an auxiliary
    loss that teaches a state what the rest of its session holds, not only the next click.

    Row i's loss is the mean of -log p over the distinct items its session clicks after row i's target
    (rows with none add 0); the result is the sum over rows divided by the number of rows.

    Args:
        log_probs: (N, C) log-probabilities of each row over the score columns, or (M, N, C) for M
            scorers of the same rows (the mean is then over all M * N rows).
        target_columns: (N,) the column of each row's target.
        is_target: (B, T) which positions of the padded batch hold the N rows, in row-major order: the
            rows of one session are its positions in order.
        columns: (C,) the item of each column when items may have several columns (one per proposal);
            all columns of a later item then count, sharing its weight. None: one column per item.
        dense: the rows are all B * T positions, padding included (it adds 0 and is not counted), rather
            than only the true ones; no host sync on an accelerator.
    """
    n, c = log_probs.shape[-2:]
    steps = is_target.shape[1]
    if dense:  # (B, T) row of each position
        row = torch.arange(is_target.numel(), device=is_target.device).view(is_target.shape)
    else:
        row = (is_target.flatten().cumsum(0) - 1).view(is_target.shape)
    after = torch.ones(steps, steps, dtype=torch.bool, device=is_target.device).triu(1)
    later = is_target[:, :, None] & is_target[:, None, :] & after  # (B, T, T'): position t' is after t
    later_column = target_columns[row.clamp(min=0)]  # (B, T') column of the target at t'
    index = torch.where(later, row[:, :, None] * c + later_column[:, None, :], 0).flatten()
    # amax marks each (row, column) once however often the item comes later; the unmarked pairs add 0.
    weights = log_probs.new_zeros(n * c).scatter_reduce_(0, index, later.flatten().to(log_probs.dtype), "amax")
    weights = weights.view(n, c)
    if columns is not None:  # every copy of a marked item counts, each with an equal share of its weight
        same = (columns[:, None] == columns[None, :]).to(log_probs.dtype)  # (C, C)
        copies = same.sum(dim=1)
        weights = (weights @ same).clamp(max=1.0) / copies
        # A copy's probability times the item's copies is the item's: the loss of one column per item.
        log_probs = log_probs + copies.log()
    totals = weights.sum(dim=1)
    # Columns that are padding score -inf; they have weight 0, so they must add 0, not NaN.
    terms = torch.where(weights > 0, weights * log_probs, 0.0)
    per_row = -terms.sum(dim=-1) / totals.clamp(min=1e-12)  # (..., N)
    n_rows = (is_target.sum() * (per_row.numel() // n)).clamp(min=1) if dense else max(per_row.numel(), 1)
    return torch.where(totals > 0, per_row, 0.0).sum() / n_rows
