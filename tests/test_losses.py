"""Losses on fixed tiny batches against hand-computed values, the sampler's law, and the logQ correction."""

import math

import numpy as np
import pytest
import torch

from lstm_rec.data import ItemIndex
from lstm_rec.losses import (
    PopularitySampler,
    bpr_max_loss,
    later_items_loss,
    sampled_candidates,
    sampled_softmax_loss,
    shared_candidates,
)
from lstm_rec.module import SessionRecModule

SCORES = torch.tensor([[2.0, 0.5, 1.0], [0.0, 1.0, 3.0]])  # 2 rows (targets) x 3 candidates
TARGETS = torch.tensor([4, 7])
EXTRA = torch.tensor([9])  # the two targets, then one extra negative: columns 4, 7, 9


def candidates(targets: torch.Tensor, extra: torch.Tensor, log_q: torch.Tensor | None = None):
    log_q = torch.zeros(len(targets) + len(extra)) if log_q is None else log_q
    return shared_candidates(targets, extra, log_q)


def softmax_ce(logits: list[float], positive: int) -> float:
    return -logits[positive] + math.log(sum(math.exp(x) for x in logits if x != float("-inf")))


def test_sampled_softmax_without_correction():
    loss = sampled_softmax_loss(SCORES, candidates(TARGETS, EXTRA), logq=0.0)
    expected = (softmax_ce([2.0, 0.5, 1.0], 0) + softmax_ce([0.0, 1.0, 3.0], 1)) / 2
    assert loss.item() == pytest.approx(expected)


def test_sampled_softmax_with_logq():
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.125]))
    loss = sampled_softmax_loss(SCORES, candidates(TARGETS, EXTRA, log_q), logq=1.0)
    corrected = SCORES - log_q  # subtract log q of every candidate
    expected = (softmax_ce(corrected[0].tolist(), 0) + softmax_ce(corrected[1].tolist(), 1)) / 2
    assert loss.item() == pytest.approx(expected)


def test_logq_correction_changes_the_ranking():
    # Raw scores rank the popular candidate first; corrected by log q it falls behind the rare one.
    raw = torch.tensor([[2.0, 1.5]])
    log_q = torch.log(torch.tensor([0.9, 0.1]))
    assert raw.argmax().item() == 0
    assert (raw - log_q).argmax().item() == 1
    # ... and so the loss of the row whose positive is the popular item grows.
    shared = candidates(torch.tensor([3]), torch.tensor([8]), log_q)
    plain = sampled_softmax_loss(raw, shared, logq=0.0)
    corrected = sampled_softmax_loss(raw, shared, logq=1.0)
    assert corrected.item() == pytest.approx(softmax_ce([2.0 - math.log(0.9), 1.5 - math.log(0.1)], 0))
    assert corrected > plain


def test_accidental_hits_are_not_negatives():
    # Both rows target item 4, so they share its column; for neither row is item 4 a negative.
    scores = torch.tensor([[2.0, 1.0], [1.0, 3.0]])  # columns: item 4, item 9
    loss = sampled_softmax_loss(scores, candidates(torch.tensor([4, 4]), torch.tensor([9])), logq=0.0)
    expected = (softmax_ce([2.0, 1.0], 0) + softmax_ce([1.0, 3.0], 0)) / 2
    assert loss.item() == pytest.approx(expected)


def copies_by_hand(loss: str, scores: np.ndarray, items: list[int], n: int, log_q: np.ndarray) -> float:
    """The loss over every proposal as its own candidate: row i's positive is proposal i; other proposals of
    its item are not negatives; each proposal's score is its item's."""
    total = 0.0
    for i in range(n):
        row = [scores[i, item] for item in items]
        keep = [j for j in range(len(items)) if j == i or items[j] != items[i]]
        if loss == "sampled_softmax":
            total += softmax_ce([row[j] - log_q[j] for j in keep], keep.index(i))
        else:
            total += bpr_max_by_hand([row[j] for j in keep], keep.index(i), 0.5)
    return total / n


@pytest.mark.parametrize("distinct", [True, False])
@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr_max"])
def test_a_candidate_proposed_k_times_counts_k_times(loss, distinct):
    # Targets 2, 0, 2 and draws 3, 3, 0, 5: scores are computed once per distinct item (0, 2, 3, 5), or once
    # per proposal, and the loss equals the one over all seven proposals, each with its own log q.
    targets, extra = torch.tensor([2, 0, 2]), torch.tensor([3, 3, 0, 5])
    log_q = torch.log(torch.tensor([0.3, 0.2, 0.3, 0.1, 0.1, 0.25, 0.05]))
    shared = shared_candidates(targets, extra, log_q, distinct)
    if distinct:
        assert shared.columns.tolist() == [0, 2, 3, 5]
        assert shared.copies.tolist() == [1, 0, 1, 2, 2, 0, 3]
    else:
        assert shared.columns.tolist() == [2, 0, 2, 3, 3, 0, 5]
    by_item = torch.tensor(
        [[1.0, -0.5, 2.0, 0.0, 0.0, 0.3], [0.2, 0.0, 1.5, -1.0, 0.0, 2.5], [0.0, 0.0, 0.7, 1.1, 0.0, -0.4]]
    )
    scores = by_item[:, shared.columns]
    items = torch.cat([targets, extra]).tolist()
    if loss == "sampled_softmax":
        value = sampled_softmax_loss(scores, shared, logq=1.0)
    else:
        value = bpr_max_loss(scores, shared, bpreg=0.5)
    expected = copies_by_hand(loss, by_item.numpy().astype(float), items, 3, log_q.numpy().astype(float))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def bpr_max_by_hand(row: list[float], positive: int, bpreg: float) -> float:
    negatives = [x for j, x in enumerate(row) if j != positive]
    weights = np.exp(negatives) / np.exp(negatives).sum()
    sigmoid = 1 / (1 + np.exp(-(row[positive] - np.array(negatives))))
    return -math.log((weights * sigmoid).sum()) + bpreg * (weights * np.array(negatives) ** 2).sum()


@pytest.mark.parametrize("bpreg", [0.0, 0.5])
def test_bpr_max(bpreg):
    loss = bpr_max_loss(SCORES, candidates(TARGETS, EXTRA), bpreg)
    expected = (bpr_max_by_hand([2.0, 0.5, 1.0], 0, bpreg) + bpr_max_by_hand([0.0, 1.0, 3.0], 1, bpreg)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sampler_follows_popularity_to_the_alpha():
    counts = torch.tensor([1, 4, 16, 0])  # unseen items count as 1
    sampler = PopularitySampler(counts, alpha=0.5)
    torch.manual_seed(0)
    draws = np.bincount(sampler(100_000).numpy(), minlength=4)
    expected = np.array([1, 2, 4, 1]) / 8 * 100_000
    chi_square = ((draws - expected) ** 2 / expected).sum()
    assert chi_square < 16.3  # 3 degrees of freedom, p = 0.001
    shared = sampled_candidates(torch.tensor([2, 0]), sampler, 3)
    proposals = shared.columns[shared.copies]  # the targets, then the three draws
    assert proposals[:2].tolist() == [2, 0] and len(proposals) == 5
    assert shared.columns.tolist() == sorted(set(proposals.tolist()))
    frequency = np.array([1, 4, 16, 1]) / 22
    log_q = shared.log_q.numpy()
    np.testing.assert_allclose(log_q[:2], np.log(frequency[[2, 0]]), rtol=1e-6)
    np.testing.assert_allclose(log_q[2:], np.log(np.array([1, 2, 4, 1]) / 8)[proposals[2:].numpy()], rtol=1e-6)


def test_later_items_loss_by_hand():
    # Two sessions, right-padded: targets b, c, b, e (session 1) and c, d (session 2); columns a..e = 0..4.
    b, c, d, e = 1, 2, 3, 4
    is_target = torch.tensor([[True, True, True, True], [True, True, False, False]])
    target_columns = torch.tensor([b, c, b, e, c, d])
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.7]]) * torch.arange(1.0, 7.0)[:, None]  # (6 rows, 5 columns)
    log_probs = torch.log_softmax(scores, dim=1)
    lp = log_probs.tolist()
    # Row 0 is followed by c, b, e (b only once); row 1 by b, e; row 2 by e; row 4 by d; rows 3 and 5 by nothing.
    expected = (-(lp[0][c] + lp[0][b] + lp[0][e]) / 3 - (lp[1][b] + lp[1][e]) / 2 - lp[2][e] - lp[4][d]) / 6
    assert later_items_loss(log_probs, target_columns, is_target).item() == pytest.approx(expected, rel=1e-6)


def test_later_items_loss_is_the_same_with_one_column_per_proposal():
    # Columns repeating items (one per proposal, as off the CPU) give the same loss and gradient as distinct
    # columns: every copy of a later item counts, with an equal share of its weight.
    torch.manual_seed(0)
    targets = torch.randint(1, 12, (6, 7))
    targets[torch.arange(7)[None, :] >= torch.tensor([7, 5, 1, 0, 3, 6])[:, None]] = 0
    is_target = targets > 0
    rows = targets[is_target] - 1
    extra = torch.randint(0, 11, (9,))
    embeddings, states = torch.randn(11, 4), torch.randn(len(rows), 4)
    values, gradients = [], []
    for distinct in (True, False):
        shared = shared_candidates(rows, extra, torch.zeros(len(rows) + 9), distinct)
        weights = embeddings.clone().requires_grad_()
        scores = states @ weights[shared.columns].T
        log_probs = torch.log_softmax(scores + shared.log_weights(torch.zeros_like(shared.log_q)), dim=1)
        columns = None if distinct else shared.columns
        loss = later_items_loss(log_probs, shared.positives(len(rows)), is_target, columns)
        values.append(loss.detach())
        gradients.append(torch.autograd.grad(loss, weights)[0])
    assert len(shared.columns) > len(torch.unique(shared.columns))  # the case has repeats to merge
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("loss", ["cross_entropy", "sampled_softmax", "bpr_max"])
def test_later_weight_adds_the_later_items_loss(loss):
    torch.manual_seed(0)
    index = ItemIndex(ids=np.arange(1, 21), counts=np.arange(1, 21))
    batch = torch.randint(1, 21, (5, 6))
    batch[3:, 3:] = 0
    values = []
    for weight in (0.0, 0.5):
        torch.manual_seed(1)
        module = SessionRecModule(index, embedding_dim=8, hidden=8, loss=loss, n_negatives=10, later_weight=weight)
        module.log = lambda *args, **kwargs: None  # outside a Trainer
        torch.manual_seed(2)  # the same negatives for both
        values.append(module.training_step(batch, 0).item())
    # The term on its own, from the same scores: over all items, or over the same drawn candidates.
    inputs, targets = batch[:, :-1], batch[:, 1:]
    is_target = targets > 0
    rows = targets[is_target] - 1
    with torch.no_grad():
        states = module.net(inputs)[is_target]
        if loss == "cross_entropy":
            log_probs = torch.log_softmax(module.net.score(states, None), dim=1)
            columns = rows
        else:
            torch.manual_seed(2)
            shared = sampled_candidates(rows, module.sampler, 10)
            scores = module.net.score_columns(states, shared.columns, None, distinct=True)
            log_probs = torch.log_softmax(scores + shared.log_weights(torch.zeros_like(shared.log_q)), dim=1)
            columns = shared.positives(len(rows))
    later = later_items_loss(log_probs, columns, is_target).item()
    assert later > 0
    assert values[1] - values[0] == pytest.approx(0.5 * later, rel=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "sampled_softmax", "bpr_max"])
def test_each_loss_is_finite_and_decreases(loss):
    torch.manual_seed(0)
    index = ItemIndex(ids=np.arange(1, 51), counts=np.arange(1, 51))
    module = SessionRecModule(index, embedding_dim=16, hidden=16, loss=loss, n_negatives=20)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    batch = torch.randint(1, 51, (8, 6))
    batch[5:, 4:] = 0
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same negatives every step: the loss of one fixed problem
        value = module.training_step(batch, 0)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_unknown_loss():
    with pytest.raises(ValueError, match="loss must be one of"):
        SessionRecModule(ItemIndex(ids=np.arange(3), counts=np.ones(3, dtype=np.int64)), loss="hinge")


def test_negative_later_weight():
    with pytest.raises(ValueError, match="later_weight must be a weight >= 0"):
        SessionRecModule(ItemIndex(ids=np.arange(3), counts=np.ones(3, dtype=np.int64)), later_weight=-0.1)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr_max", "cross_entropy"])
@pytest.mark.parametrize("setting", ["one network", "later items", "ensemble", "shared negatives"])
def test_every_position_as_a_row_gives_the_loss_of_the_true_rows(loss, setting, monkeypatch):
    # Off the CPU the step scores every position of the padded batch, padding masked out, and one column per
    # proposal (no data-dependent sizes, so no host sync). It must give the CPU path's loss and gradients.
    index = ItemIndex(ids=np.arange(1, 31), counts=np.arange(1, 31))
    settings = {"embedding_dim": 8, "hidden": 8, "loss": loss, "n_negatives": 12, "dropout": 0.3}
    if setting == "later items":
        settings["later_weight"] = 0.5
    if setting in ("ensemble", "shared negatives"):
        settings["members"] = [{}, {"repeat_window": 3}]
        settings["shared_negatives"] = setting == "shared negatives"
        settings["later_weight"] = 0.3
    batch = torch.tensor([[1, 2, 3, 4, 2, 5], [5, 6, 5, 0, 0, 0], [7, 1, 9, 8, 0, 0], [3, 3, 0, 0, 0, 0]])
    torch.manual_seed(0)
    module = SessionRecModule(index, **settings)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    results = []
    for dense in (False, True):
        monkeypatch.setattr(SessionRecModule, "_dense", property(lambda self, dense=dense: dense))
        module.zero_grad()
        torch.manual_seed(7)  # the same dropout and the same negatives
        value = module.training_step(batch, 0)
        value.backward()
        results.append((value.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}))
    (sparse_loss, sparse_grads), (dense_loss, dense_grads) = results
    assert torch.isfinite(dense_loss)
    torch.testing.assert_close(dense_loss, sparse_loss)
    for name, grad in sparse_grads.items():
        torch.testing.assert_close(dense_grads[name], grad, msg=name)


def test_padding_rows_propose_nothing_and_add_nothing():
    # Rows 1 and 3 are padding: their targets are not negatives for the others, and they add no loss.
    scores = torch.tensor([[2.0, 0.5, 1.0, 0.3, -1.0], [9.0, 9.0, 9.0, 9.0, 9.0], [0.0, 1.0, 3.0, 0.7, 0.2]])
    scores = torch.cat([scores, scores[1:2]])  # (4 rows, 4 targets + 1 extra negative)
    targets, real = torch.tensor([4, -1, 7, -1]), torch.tensor([True, False, True, False])
    log_q = torch.tensor([-1.0, 0.0, -2.0, 0.0, -0.5])
    padded = shared_candidates(targets, torch.tensor([9]), log_q, distinct=False, real=real)
    true_rows = shared_candidates(torch.tensor([4, 7]), torch.tensor([9]), log_q[[0, 2, 4]], distinct=False)
    columns = [0, 2, 4]
    for loss, argument in ((sampled_softmax_loss, 1.0), (bpr_max_loss, 0.5)):
        expected = loss(scores[[0, 2]][:, columns], true_rows, argument)
        torch.testing.assert_close(loss(scores, padded, argument), expected)
    with pytest.raises(ValueError, match="need one column per proposal"):
        shared_candidates(targets, torch.tensor([9]), log_q, distinct=True, real=real)
