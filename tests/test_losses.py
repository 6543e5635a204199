"""Losses on fixed tiny batches against hand-computed values, the sampler's law, the logQ correction, and the two
layouts of the sampled losses (same loss, same gradients)."""

import math

import numpy as np
import pytest
import torch

from lstm_rec.losses import (
    BPRMax,
    Candidates,
    CrossEntropy,
    PopularitySampler,
    SampledSoftmax,
    alias_table,
    bpr_max_loss,
    distinct_candidates,
    sampled_softmax_loss,
)
from lstm_rec.model import SessionLSTM

SCORES = torch.tensor([[[2.0, 0.5, 1.0], [0.0, 1.0, 3.0]]])  # 1 member, 2 rows (targets) x 3 candidates


def per_proposal(targets: list[int], extra: list[int], log_q: list[float] | None = None) -> Candidates:
    """One member's candidates, one column per proposal: the targets, then the extra negatives."""
    proposals = torch.tensor([[*targets, *extra]])
    log_q = torch.zeros_like(proposals, dtype=torch.float) if log_q is None else torch.tensor([log_q])
    return Candidates(proposals, torch.arange(proposals.shape[1])[None], log_q)


def softmax_ce(logits: list[float], positive: int) -> float:
    return -logits[positive] + math.log(sum(math.exp(x) for x in logits if x != float("-inf")))


def bpr_max_by_hand(row: list[float], positive: int, reg: float) -> float:
    negatives = [x for j, x in enumerate(row) if j != positive]
    weights = np.exp(negatives) / np.exp(negatives).sum()
    sigmoid = 1 / (1 + np.exp(-(row[positive] - np.array(negatives))))
    return -math.log((weights * sigmoid).sum()) + reg * (weights * np.array(negatives) ** 2).sum()


def test_sampled_softmax_without_and_with_the_logq_correction():
    loss = sampled_softmax_loss(SCORES, per_proposal([4, 7], [9]), logq_weight=0.0)
    expected = (softmax_ce([2.0, 0.5, 1.0], 0) + softmax_ce([0.0, 1.0, 3.0], 1)) / 2
    assert loss.item() == pytest.approx(expected)
    log_q = np.log([0.5, 0.25, 0.125])
    loss = sampled_softmax_loss(SCORES, per_proposal([4, 7], [9], log_q.tolist()), logq_weight=1.0)
    corrected = SCORES[0].numpy() - log_q  # every candidate's score minus its log q
    expected = (softmax_ce(corrected[0].tolist(), 0) + softmax_ce(corrected[1].tolist(), 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_logq_correction_changes_the_ranking():
    # Raw scores rank the popular candidate first; corrected by log q it falls behind the rare one, so the loss of
    # the row whose positive is the popular item grows.
    raw, log_q = torch.tensor([[[2.0, 1.5]]]), [math.log(0.9), math.log(0.1)]
    plain = sampled_softmax_loss(raw, per_proposal([3], [8], log_q), logq_weight=0.0)
    corrected = sampled_softmax_loss(raw, per_proposal([3], [8], log_q), logq_weight=1.0)
    assert corrected.item() == pytest.approx(softmax_ce([2.0 - log_q[0], 1.5 - log_q[1]], 0))
    assert corrected > plain


def test_accidental_hits_are_not_negatives():
    # Both rows target item 4; for neither is the other's copy of item 4 a negative.
    scores = torch.tensor([[[2.0, 5.0, 1.0], [7.0, 1.0, 3.0]]])  # columns: item 4, item 4, item 9
    loss = sampled_softmax_loss(scores, per_proposal([4, 4], [9]), logq_weight=0.0)
    assert loss.item() == pytest.approx((softmax_ce([2.0, 1.0], 0) + softmax_ce([1.0, 3.0], 0)) / 2)


@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_bpr_max_by_hand(reg):
    loss = bpr_max_loss(SCORES, per_proposal([4, 7], [9]), reg)
    expected = (bpr_max_by_hand([2.0, 0.5, 1.0], 0, reg) + bpr_max_by_hand([0.0, 1.0, 3.0], 1, reg)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bpr_max_with_an_elu_on_the_scores_by_hand():
    """model.loss.elu: GRU4Rec's ELU on the scores before BPR-max; negative scores become alpha * (e^x - 1)."""

    def elu(x: float, alpha: float) -> float:
        return x if x > 0 else alpha * (math.exp(x) - 1)

    scores = torch.tensor([[[2.0, -0.5, -3.0], [-1.0, 1.0, 0.5]]])
    loss = BPRMax(n_negatives=1, elu=0.5, score_regularization=1.95).value(scores, per_proposal([4, 7], [9]))
    rows = [[elu(x, 0.5) for x in row] for row in scores[0].tolist()]
    expected = (bpr_max_by_hand(rows[0], 0, 1.95) + bpr_max_by_hand(rows[1], 1, 1.95)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = BPRMax(n_negatives=1, score_regularization=1.95).value(scores, per_proposal([4, 7], [9]))
    assert plain.item() != pytest.approx(expected)
    with pytest.raises(ValueError, match=r"model\.loss\.elu must be 0"):
        BPRMax(n_negatives=1, elu=-0.5)


def test_bpr_max_backward_is_the_gradient_of_its_formula():
    # The hand-written backward pass against finite differences, in float64, with repeated and own columns.
    torch.manual_seed(0)
    proposals = torch.randint(0, 12, (2, 20))
    proposals[:, :6] = torch.randint(0, 12, (6,))
    for candidates in (distinct_candidates(proposals, torch.zeros(2, 20), 12), per_proposal([1, 3, 1, 5], [3, 7, 2])):
        columns = candidates.columns.shape[1]
        rows = 6 if candidates.distinct else 4
        scores = torch.randn(len(candidates.columns), rows, columns, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s, c=candidates: bpr_max_loss(s, c, 0.7), (scores,))


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
    items = [2, 0, 2, 3, 3, 0, 5]
    log_q = np.log([0.3, 0.2, 0.3, 0.1, 0.1, 0.25, 0.05])
    if distinct:
        candidates = distinct_candidates(torch.tensor([items]), torch.tensor(log_q[None], dtype=torch.float), 6)
        assert candidates.columns.tolist() == [[0, 2, 3, 5]] and candidates.copies.tolist() == [[1, 0, 1, 2, 2, 0, 3]]
    else:
        candidates = per_proposal(items[:3], items[3:], log_q.tolist())
    by_item = torch.tensor(
        [[1.0, -0.5, 2.0, 0.0, 0.0, 0.3], [0.2, 0.0, 1.5, -1.0, 0.0, 2.5], [0.0, 0.0, 0.7, 1.1, 0.0, -0.4]]
    )
    scores = by_item[:, candidates.columns[0]][None]
    if loss == "sampled_softmax":
        value = sampled_softmax_loss(scores, candidates, logq_weight=1.0)
    else:
        value = bpr_max_loss(scores, candidates, 0.5)
    assert value.item() == pytest.approx(copies_by_hand(loss, by_item.numpy().astype(float), items, 3, log_q), rel=1e-5)


def test_distinct_candidates_per_member_end_in_placeholders():
    # Member 0 proposes items 4, 4, 1; member 1 items 2, 2, 2: its one column is followed by placeholders (-1).
    candidates = distinct_candidates(torch.tensor([[4, 4, 1], [2, 2, 2]]), torch.zeros(2, 3), 6)
    assert candidates.columns.tolist() == [[1, 4], [2, -1]]
    assert candidates.copies.tolist() == [[1, 1, 0], [0, 0, 0]]
    assert candidates.log_weights(torch.zeros(2, 3)).exp().tolist() == [[1.0, 2.0], [3.0, 0.0]]


def test_the_loss_of_members_is_the_mean_of_each_members_loss():
    scores = torch.tensor([[[2.0, 0.5, 1.0], [0.0, 1.0, 3.0]], [[1.0, 1.5, -1.0], [0.5, 0.2, 0.1]]])  # 2 members
    candidates = Candidates(torch.tensor([[4, 7, 9], [4, 7, 2]]), torch.arange(3).expand(2, 3), torch.zeros(2, 3))
    for loss, argument in ((sampled_softmax_loss, 0.0), (bpr_max_loss, 0.5)):
        each = [loss(scores[m : m + 1], Candidates(*(t[m : m + 1] for t in candidates[:3])), argument) for m in (0, 1)]
        torch.testing.assert_close(loss(scores, candidates, argument), (each[0] + each[1]) / 2)


def test_padding_rows_propose_nothing_and_add_nothing():
    # Rows 1 and 3 are padding (targets -1): their proposals are not negatives for the others, and they add no loss.
    scores = torch.tensor([[2.0, 0.5, 1.0, 0.3, -1.0], [9.0] * 5, [0.0, 1.0, 3.0, 0.7, 0.2], [9.0] * 5])[None]
    log_q = torch.tensor([[-1.0, 0.0, -2.0, 0.0, -0.5]])
    real = torch.tensor([True, False, True, False, True])
    padded = Candidates(torch.tensor([[4, -1, 7, -1, 9]]), torch.arange(5)[None], log_q, real)
    true_rows = Candidates(torch.tensor([[4, 7, 9]]), torch.arange(3)[None], log_q[:, [0, 2, 4]])
    for loss, argument in ((sampled_softmax_loss, 1.0), (bpr_max_loss, 0.5)):
        expected = loss(scores[:, [0, 2]][:, :, [0, 2, 4]], true_rows, argument)
        torch.testing.assert_close(loss(scores, padded, argument), expected)


def test_sampler_follows_popularity_to_the_alpha():
    counts = torch.tensor([1, 4, 16, 0])  # unseen items count as 1
    sampler = PopularitySampler(counts, alpha=0.5)
    torch.manual_seed(0)
    draws = np.bincount(sampler(100_000).numpy(), minlength=4)
    expected = np.array([1, 2, 4, 1]) / 8 * 100_000
    assert ((draws - expected) ** 2 / expected).sum() < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
    np.testing.assert_allclose(sampler.log_probability.exp().numpy(), [1 / 8, 2 / 8, 4 / 8, 1 / 8], rtol=1e-6)
    np.testing.assert_allclose(sampler.log_frequency.exp().numpy(), np.array([1, 4, 16, 1]) / 22, rtol=1e-6)


@pytest.mark.parametrize(
    "weights",
    [[1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 4.0, 1.0], [1000.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.25, 3.0, 0.125, 7.0, 1.0]],
)
def test_alias_table_holds_the_law_exactly(weights):
    probability = np.array(weights) / np.sum(weights)
    keep, alias = alias_table(probability)
    n = len(probability)
    assert ((keep >= 0) & (keep <= 1 + 1e-12)).all() and ((alias >= 0) & (alias < n)).all()
    law = keep / n  # a uniform column, kept with its own share, else its alias
    np.add.at(law, alias, (1 - keep) / n)
    np.testing.assert_allclose(law, probability, rtol=1e-12)


def test_alias_table_by_hand():
    # Shares of a column 2, 1/2, 1, 1/2: column 3 takes its other half from 2, which then holds 1/2 and takes its
    # other half from 0, as does column 1; 0 is left with exactly 1.
    keep, alias = alias_table(np.array([0.5, 0.125, 0.25, 0.125]))
    np.testing.assert_allclose(keep, [1.0, 0.5, 0.5, 0.5])
    assert alias[1:].tolist() == [0, 0, 2]


def training_case(loss_name: str, layout: str, members: list | None):
    torch.manual_seed(0)
    net = SessionLSTM(30, embedding_dim=8, hidden=8, dropout=0.3, repeat_window=2, members=members)
    if loss_name == "cross_entropy":
        loss = CrossEntropy()
    else:
        loss = (SampledSoftmax if loss_name == "sampled_softmax" else BPRMax)(n_negatives=12, layout=layout)
    loss.set_item_counts(np.arange(1, 31))
    return net, loss


BATCH = torch.tensor([[1, 2, 3, 4, 2, 5], [5, 6, 5, 0, 0, 0], [7, 1, 9, 8, 0, 0], [3, 3, 0, 0, 0, 0]])


@pytest.mark.parametrize("loss_name", ["sampled_softmax", "bpr_max"])
@pytest.mark.parametrize("members", [None, [{}, {"repeat_window": 0}, {"dropout": 0.1}]])
def test_both_layouts_give_the_same_loss_and_gradients(loss_name, members):
    # "padded" scores every position of the padded batch, padding masked out, and one column per proposal (no
    # data-dependent sizes, so no host sync on an accelerator); "compact" the true rows and distinct items.
    results = []
    for layout in ("compact", "padded"):
        net, loss = training_case(loss_name, layout, members)
        torch.manual_seed(7)  # the same dropout and the same negatives
        value = loss(net, net.encode(BATCH[:, :-1]), BATCH[:, 1:])
        value.backward()
        results.append((value.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    (compact, compact_grads), (padded, padded_grads) = results
    assert torch.isfinite(padded)
    torch.testing.assert_close(padded, compact)
    for name, grad in compact_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, msg=name)


def test_cross_entropy_of_an_ensemble_is_the_sum_of_its_members_own_losses():
    net, loss = training_case("cross_entropy", "compact", [{}, {"repeat_window": 0}])
    net.eval()
    states = net.encode(BATCH[:, :-1])
    is_target = BATCH[:, 1:] > 0
    expected = 0.0
    for member in net.score_members(states.flat()):  # (B * T, n_items) each
        rows = member.view(*is_target.shape, -1)[is_target]
        expected += torch.nn.functional.cross_entropy(rows, BATCH[:, 1:][is_target] - 1)
    torch.testing.assert_close(loss(net, states, BATCH[:, 1:]), expected)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "sampled_softmax", "bpr_max"])
def test_each_loss_is_finite_and_decreases(loss_name):
    net, loss = training_case(loss_name, "compact", [{}, {}])
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        torch.manual_seed(1)  # the same negatives every step: the loss of one fixed problem
        value = loss(net, net.encode(BATCH[:, :-1]), BATCH[:, 1:])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_the_layout_follows_the_device_and_bad_settings_are_refused():
    loss = BPRMax()
    loss.resolve_layout(torch.device("cpu"))
    assert loss.layout == "compact"
    loss = BPRMax()
    loss.resolve_layout(torch.device("cuda"))
    assert loss.layout == "padded"
    explicit = BPRMax(layout="padded")
    explicit.resolve_layout(torch.device("cpu"))
    assert explicit.layout == "padded"
    with pytest.raises(RuntimeError, match="set_item_counts and resolve_layout"):
        BPRMax()(*training_case("bpr_max", "compact", None)[:1], None, BATCH)
    with pytest.raises(ValueError, match=r"model\.loss\.layout must be one of"):
        SampledSoftmax(layout="sparse")
    with pytest.raises(ValueError, match=r"model\.loss\.n_negatives must be a positive"):
        BPRMax(n_negatives=0)
