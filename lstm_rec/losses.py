"""Training losses, one object each (the model/loss config group): full softmax, and sampled softmax with logQ
correction or BPR-max over candidates the mini-batch shares."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_rec.model import PrefixStates, SessionLSTM

LAYOUTS = ("auto", "compact", "padded")


class CrossEntropy(nn.Module):
    """Softmax over every item. Every position of the padded batch is a row and padding is ignored, so there is no
    host sync; scores the whole catalog, so for large catalogs prefer a sampled loss."""

    def set_item_counts(self, counts: np.ndarray) -> None:
        """Nothing to learn from the training click counts."""

    def forward(self, net: SessionLSTM, states: PrefixStates, targets: Tensor) -> Tensor:
        """The sum over members of each member's mean loss; states (M, B, T, H), targets (B, T), 0 = padding."""
        logits = net.score_members(states.flat())  # (M, B * T, n_items)
        columns = (targets.flatten() - 1).repeat(len(logits))  # score column j is item j + 1; padding -> -1
        return len(logits) * F.cross_entropy(logits.flatten(0, 1), columns, ignore_index=-1)


class SampledLoss(nn.Module):
    """A loss over the batch's own targets plus `n_negatives` items drawn per member with probability
    proportional to popularity ** `sample_alpha` (alpha 0: uniform); never scores the whole catalog.

    `layout` says how the scores are laid out: "compact" takes the true targets as rows and scores each
    distinct candidate once, counted as often as it was proposed; "padded" takes every position of the padded
    batch as a row (padding masked out) and every proposal as a column. Both give the same loss and gradients.
    "auto" is resolved by `resolve_layout` when fitting starts (see there for why).
    """

    def __init__(self, n_negatives: int = 2048, sample_alpha: float = 0.5, layout: str = "auto") -> None:
        super().__init__()
        if n_negatives < 1:
            raise ValueError(f"model.loss.n_negatives must be a positive number of sampled items, got {n_negatives}")
        if layout not in LAYOUTS:
            raise ValueError(f"model.loss.layout must be one of {LAYOUTS}, got {layout!r}")
        self.n_negatives, self.sample_alpha, self.layout = n_negatives, sample_alpha, layout
        self.sampler: PopularitySampler | None = None

    def set_item_counts(self, counts: np.ndarray) -> None:
        self.sampler = PopularitySampler(torch.as_tensor(counts), self.sample_alpha)

    def resolve_layout(self, device: torch.device) -> None:
        """Pick the layout for `device` when it is "auto": compact on the CPU, padded on accelerators.

        Compact scores fewer columns (on yoochoose-100k a batch's 188 targets plus 2,048 draws hold about 1,370
        distinct items) and skips padding rows, but picking the true rows and the distinct items
        (boolean indexing, torch.unique) makes the host wait for an accelerator at every step; on the CPU
        there is nothing to wait for. See docs/model.md for the measured step times.
        """
        if self.layout == "auto":
            self.layout = "compact" if device.type == "cpu" else "padded"

    def forward(self, net: SessionLSTM, states: PrefixStates, targets: Tensor) -> Tensor:
        """The sum over members of each member's mean loss; states (M, B, T, H), targets (B, T), 0 = padding."""
        if self.sampler is None or self.layout == "auto":
            raise RuntimeError("call set_item_counts and resolve_layout before the sampled loss is computed")
        members = states.hidden.shape[0]
        if self.layout == "compact":
            is_target = targets > 0
            rows, columns, real = states[is_target], targets[is_target] - 1, None  # (M, N, H), (N,)
        else:
            rows, columns, real = states.flat(), targets.flatten() - 1, targets.flatten() > 0
        candidates = self._candidates(columns, members, real, net.n_items)
        scores = net.score_columns(rows, candidates.columns, distinct=self.layout == "compact")  # (M, N, C)
        return members * self.value(scores, candidates)

    def _candidates(self, targets: Tensor, members: int, real: Tensor | None, n_items: int) -> Candidates:
        extra = self.sampler(members * self.n_negatives).view(members, -1)  # (M, n_negatives)
        target_log_q = self.sampler.log_frequency[targets.clamp(min=0)].expand(members, -1)
        log_q = torch.cat([target_log_q, self.sampler.log_probability[extra]], dim=1)  # (M, P)
        proposals = torch.cat([targets.expand(members, -1), extra], dim=1)
        if self.layout == "compact":
            return distinct_candidates(proposals, log_q, n_items)
        real = torch.cat([real, real.new_ones(self.n_negatives)])
        copies = torch.arange(proposals.shape[1], device=proposals.device).expand(members, -1)
        return Candidates(proposals, copies, log_q, real)

    def value(self, scores: Tensor, candidates: Candidates) -> Tensor:
        raise NotImplementedError


class SampledSoftmax(SampledLoss):
    """Cross-entropy over the shared candidates: row i's positive is its own target, its negatives every other
    proposal (other copies of its own item are not negatives).

    The logQ correction subtracts `logq_weight` * log q(proposal) from the score of every proposal, so that items
    proposed more often are not over-penalised as negatives (Yi et al., RecSys 2019); a column proposed k times
    counts as k negatives, each with its own correction.
    """

    def __init__(self, logq_weight: float = 1.0, **sampling) -> None:
        super().__init__(**sampling)
        self.logq_weight = logq_weight

    def value(self, scores: Tensor, candidates: Candidates) -> Tensor:
        return sampled_softmax_loss(scores, candidates, self.logq_weight)


class BPRMax(SampledLoss):
    """BPR-max (Hidasi & Karatzoglou, CIKM 2018) over the shared candidates, with score regularisation
    `score_regularization` (GRU4Rec's bpreg).

    `elu` > 0 passes the scores through an ELU with that alpha before the loss (GRU4Rec's elu_param): scores
    below 0 are squashed towards -alpha, so the regulariser's pull on very negative scores fades. The ELU is
    increasing, so it changes training only, never how items rank.
    """

    def __init__(self, score_regularization: float = 1.0, elu: float = 0.0, **sampling) -> None:
        super().__init__(**sampling)
        if elu < 0:
            raise ValueError(f"model.loss.elu must be 0 (off) or the ELU's positive alpha, got {elu}")
        self.score_regularization, self.elu = score_regularization, elu

    def value(self, scores: Tensor, candidates: Candidates) -> Tensor:
        if self.elu > 0:
            scores = F.elu(scores, self.elu)
        return bpr_max_loss(scores, candidates, self.score_regularization)


class PopularitySampler(nn.Module):
    """Draws items with probability proportional to popularity ** alpha (alpha 0: uniform); unseen items count 1.

    By the alias method (Walker; Vose's construction): a draw takes a uniform column and keeps it with that column's
    own share, else takes the column's alias. Two uniform numbers per draw whatever the catalog's size, where
    torch.multinomial searches the cumulative law: 35 against 220 microseconds for 2,048 draws from 36,000 items on
    the 2-core machine, 3 % of a default training step (docs/model.md#losses)."""

    def __init__(self, counts: Tensor, alpha: float) -> None:
        super().__init__()
        weights = counts.double().clamp(min=1.0) ** alpha
        frequency = counts.double().clamp(min=1.0)
        probability = weights / weights.sum()
        keep, alias = alias_table(probability.numpy())
        self.register_buffer("log_probability", probability.log().float(), persistent=False)
        self.register_buffer("log_frequency", (frequency / frequency.sum()).log().float(), persistent=False)
        self.register_buffer("keep", torch.from_numpy(keep).float(), persistent=False)
        self.register_buffer("alias", torch.from_numpy(alias), persistent=False)

    def forward(self, n: int) -> Tensor:
        """(n,) score columns, independent draws."""
        column = torch.randint(len(self.keep), (n,), device=self.keep.device)
        stay = torch.rand(n, device=self.keep.device) < self.keep[column]
        return torch.where(stay, column, self.alias[column])


def alias_table(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a law over n outcomes (Vose's construction): column i keeps i with chance keep[i], else
    gives alias[i], so a uniform column then this choice draws i with probability probability[i]. Each column under
    its fair share 1 / n takes its remainder from one over it, which then holds that much less."""
    n = len(probability)
    share = (probability.astype(np.float64) * n).tolist()  # the columns hold 1 each in all
    keep, alias = [1.0] * n, list(range(n))
    small = [i for i, s in enumerate(share) if s < 1.0]
    large = [i for i, s in enumerate(share) if s >= 1.0]
    while small and large:
        low, high = small.pop(), large[-1]
        keep[low], alias[low] = share[low], high
        share[high] -= 1.0 - share[low]
        if share[high] < 1.0:
            small.append(large.pop())
    return np.array(keep), np.array(alias, dtype=np.int64)  # columns left over hold 1 up to rounding: they keep


class Candidates(NamedTuple):
    """The score columns of each member, and the proposals behind them.

    A member's proposals are the N rows' targets, then its own draws. Popular items come up many times, so
    the scores can be computed once per distinct item, each proposal being a copy of one column (`copies`);
    the losses weigh a column by its copies, which gives exactly the loss over all proposals. A column of -1
    is a placeholder (no proposal): it weighs nothing.

    The rows may also be every position of a padded batch (`real` marks the true targets): padding proposals
    then weigh nothing as negatives and padding rows add nothing to the losses.

    Attributes:
        columns: (M, C) each member's score columns: its distinct items, sorted, then placeholders; or one
            per proposal.
        copies: (M, P) the position in `columns` of each proposal: the N targets first, then the draws.
        log_q: (M, P) the log probability with which each proposal was made: targets arrive with their data
            frequency, draws with the sampler's law.
        real: None when every row is a true target; else (P,) False at the padding rows' proposals.
        distinct: no member's columns repeat an item, so a row's own item is in its positive column only.
    """

    columns: Tensor
    copies: Tensor
    log_q: Tensor
    real: Tensor | None = None
    distinct: bool = False

    def positives(self, n_rows: int) -> Tensor:
        """(M, N) the column of each row's own target."""
        return self.copies[:, :n_rows]

    def own(self, n_rows: int) -> Tensor:
        """(M, N, C) True at every column holding the row's own item."""
        own_items = self.columns.gather(1, self.positives(n_rows))  # (M, N)
        return self.columns[:, None, :] == own_items[:, :, None]

    def mask_own(self, values: Tensor, fill: float) -> Tensor:
        """`values` (M, N, C) with `fill` in place at every column of the row's own item."""
        if self.distinct:  # one column per item: the positive one
            return values.scatter_(2, self.positives(values.shape[1])[..., None], fill)
        return values.masked_fill_(self.own(values.shape[1]), fill)

    def log_weights(self, log_copy_weights: Tensor) -> Tensor:
        """(M, C) log of the summed weights (given as logs, (M, P), one per proposal) of each column's copies;
        padding proposals weigh 0, so placeholder columns get -inf."""
        weights = log_copy_weights.exp()
        if self.real is not None:
            weights = torch.where(self.real, weights, 0.0)
        return torch.zeros_like(self.columns, dtype=weights.dtype).scatter_add_(1, self.copies, weights).log()

    def row_mean(self, values: Tensor) -> Tensor:
        """The mean of per-row `values` (M, N) over the members and the true rows."""
        if self.real is None:
            return values.mean()
        real = self.real[: values.shape[-1]]
        return torch.where(real, values, 0.0).sum() / (real.sum() * len(values)).clamp(min=1)


def distinct_candidates(proposals: Tensor, log_q: Tensor, n_items: int) -> Candidates:
    """Candidates with one column per distinct item of each member's `proposals` (M, P), placeholders after."""
    members = len(proposals)
    stride = n_items + 1
    keys = proposals + 1 + torch.arange(members, device=proposals.device)[:, None] * stride  # distinct per member
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    member = unique // stride
    counts = torch.bincount(member, minlength=members)
    starts = counts.cumsum(0) - counts
    columns = proposals.new_full((members, int(counts.max())), -1)
    columns[member, torch.arange(len(unique), device=unique.device) - starts[member]] = unique % stride - 1
    return Candidates(columns, inverse - starts[:, None], log_q, distinct=True)


def sampled_softmax_loss(scores: Tensor, candidates: Candidates, logq_weight: float) -> Tensor:
    """Mean cross-entropy of scores (M, N, C) over the candidates, logQ-corrected (see SampledSoftmax)."""
    n_rows = scores.shape[1]
    positives = candidates.positives(n_rows)[..., None]  # (M, N, 1)
    # No column of a row's own item is a negative; its own copy is its positive, with its own correction.
    logits = candidates.mask_own(
        scores + candidates.log_weights(-logq_weight * candidates.log_q)[:, None, :], float("-inf")
    )
    positive = scores.gather(2, positives) - logq_weight * candidates.log_q[:, :n_rows, None]
    logits = logits.scatter(2, positives, positive)
    per_row = F.cross_entropy(logits.flatten(0, 1), positives.flatten(), reduction="none")
    return candidates.row_mean(per_row.view(scores.shape[:2]))


def bpr_max_loss(scores: Tensor, candidates: Candidates, score_regularization: float) -> Tensor:
    """Mean BPR-max of scores (M, N, C): -log sum_j s_j sigmoid(r_pos - r_j) + reg * sum_j s_j r_j^2, with s the
    softmax of the negative scores r_j; a row's negatives are all proposals but its own item, a column proposed
    k times counting k times."""
    log_counts = candidates.log_weights(torch.zeros_like(candidates.log_q))  # (M, C) log of the copy counts
    per_row = _BPRMax.apply(scores, candidates, log_counts, score_regularization)
    return candidates.row_mean(per_row)


class _BPRMax(torch.autograd.Function):
    """BPR-max per row, (M, N), with a hand-written backward pass: autograd's would make about twice as many
    passes over the (M, N, C) scores, which are most of a step's memory traffic.

    With w the softmax weights of the negatives, s_j = sigmoid(r_pos - r_j), R = sum w s and Q = sum w r^2, a row
    loses L = -log R + reg * Q; then dL/dr_j = w_j (dR s_j^2 + dQ r_j (r_j + 2) - dR R - dQ Q) with dR = -1 / R
    and dQ = reg, and dL/dr_pos = dR (R - sum_j w_j s_j^2). Own columns have w = 0.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, candidates: Candidates, log_counts: Tensor, reg: float) -> Tensor:
        dtype = scores.dtype
        scores = scores.to(torch.promote_types(dtype, torch.float32))
        positives = candidates.positives(scores.shape[1])
        # The softmax weights of the negatives, computed in place: passes over (M, N, C) are most of the cost.
        weights = candidates.mask_own(scores + log_counts[:, None, :], float("-inf"))
        weights.sub_(weights.amax(dim=-1, keepdim=True).clamp_(min=-1e30)).exp_()
        weights.div_(weights.sum(dim=-1, keepdim=True).clamp_(min=1e-30))
        sigmoid = (scores.gather(2, positives[..., None]) - scores).sigmoid_()
        scratch = weights * sigmoid
        ranking = scratch.sum(dim=-1) + 1e-24
        regulariser = torch.mul(weights, scores, out=scratch).mul_(scores).sum(dim=-1)
        ctx.save_for_backward(scores, positives, weights, sigmoid, ranking, regulariser)
        ctx.reg, ctx.dtype = reg, dtype
        return -ranking.log() + reg * regulariser

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        scores, positives, weights, sigmoid, ranking, regulariser = ctx.saved_tensors
        d_ranking, d_reg = -grad / ranking, grad * ctx.reg  # (M, N)
        result = sigmoid.square().mul_(weights)  # w s^2
        d_positive = d_ranking * (ranking - result.sum(dim=-1))
        result.mul_(d_ranking[..., None])
        result.add_((scores + 2.0).mul_(scores).mul_(weights).mul_(d_reg[..., None]))
        result.addcmul_(weights, -(d_ranking * ranking + d_reg * regulariser)[..., None])
        result.scatter_add_(2, positives[..., None], d_positive[..., None])
        return result.to(ctx.dtype), None, None, None
