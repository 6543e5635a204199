"""Training losses over next-item targets: full softmax, sampled softmax with logQ correction, BPR-max."""

from __future__ import annotations

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


def sampled_candidates(targets: Tensor, sampler: PopularitySampler, n_extra: int) -> tuple[Tensor, Tensor]:
    """Candidate columns shared by the mini-batch: its targets, then `n_extra` popularity^alpha draws.

    Returns:
        (columns (N + M,), log_q (N + M,)): log_q is the log probability with which each candidate was
        proposed: targets arrive with their data frequency, extra negatives with the sampler's law.
    """
    extra = sampler(n_extra) if n_extra > 0 else targets.new_zeros(0)
    columns = torch.cat([targets, extra])
    log_q = torch.cat([sampler.frequency[targets].log(), sampler.probabilities[extra].log()])
    return columns, log_q


def _mask_accidental_hits(scores: Tensor, targets: Tensor, columns: Tensor) -> Tensor:
    """Candidates that are the row's own target, other than its positive in column `row`, get -inf."""
    same = columns[None, :] == targets[:, None]  # (N, C)
    same[torch.arange(len(targets)), torch.arange(len(targets))] = False
    return scores.masked_fill(same, float("-inf"))


def sampled_softmax_loss(scores: Tensor, targets: Tensor, columns: Tensor, log_q: Tensor, logq: float) -> Tensor:
    """Cross-entropy over shared candidates; row i's positive is candidate i (its own target).

    logQ correction subtracts logq * log q(candidate) from every score, so items proposed more often
    are not over-penalised as negatives (Yi et al., RecSys 2019).

    Args:
        scores: (N, N + M) scores of each row's state against every candidate.
    """
    corrected = _mask_accidental_hits(scores - logq * log_q[None, :], targets, columns)
    return F.cross_entropy(corrected, torch.arange(len(targets), device=scores.device))


def bpr_max_loss(scores: Tensor, targets: Tensor, columns: Tensor, bpreg: float) -> Tensor:
    """BPR-max (Hidasi & Karatzoglou, CIKM 2018): -log sum_j s_j sigmoid(r_pos - r_j) + bpreg sum_j s_j r_j^2,
    with s the softmax of the negative scores r_j; the negatives of row i are all candidates but its own
    item (its positive, candidate i, and any other copy of that item)."""
    n = len(targets)
    rows = torch.arange(n, device=scores.device)
    positive = scores[rows, rows]  # (N,)
    own = columns[None, :] == targets[:, None]  # (N, C); covers candidate i of row i
    weights = torch.softmax(scores.masked_fill(own, float("-inf")), dim=1)  # (N, C); exactly 0 where own
    # Own items have weight 0, so their (finite) terms drop out without masking the scores again.
    ranking = (weights * torch.sigmoid(positive[:, None] - scores)).sum(dim=1)
    regulariser = (weights * scores.square()).sum(dim=1)
    return (-torch.log(ranking + 1e-24) + bpreg * regulariser).mean()
