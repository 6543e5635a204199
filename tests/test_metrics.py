import math

import pytest
import torch

from lstm_rec.metrics import MRR, NDCG, Coverage, PopularityBias, Recall, item_ranks, ranking_metrics, target_ranks

NO_TOPS = torch.zeros((0, 0), dtype=torch.int64)  # rank metrics ignore the top lists


def test_ranks_count_ties_against_the_target():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.3],  # target 0 is the best: rank 1
            [0.9, 0.5, 0.1, 0.3],  # target 3 below 0.9 and 0.5: rank 3
            [0.2, 0.7, 0.7, 0.7],  # target 1 tied with 2 and 3: rank 3, not 1
            [0.0, 0.0, 0.0, 0.0],  # everything equal: rank n_items
        ]
    )
    targets = torch.tensor([0, 3, 1, 2])
    assert target_ranks(scores, targets).tolist() == [1, 3, 3, 4]


def test_nan_target_score_gets_the_worst_rank():
    scores = torch.tensor([[float("nan"), 1.0, 2.0]])
    assert target_ranks(scores, torch.tensor([0])).tolist() == [3]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        # ranks 1, 3, 25 (beyond k=20), 20 (at k)
        (Recall(20), (1 + 1 + 0 + 1) / 4),
        (Recall(3), (1 + 1 + 0 + 0) / 4),
        (MRR(20), (1 + 1 / 3 + 0 + 1 / 20) / 4),
        (MRR(2), (1 + 0 + 0 + 0) / 4),
        (NDCG(20), (1 + 1 / math.log2(4) + 0 + 1 / math.log2(21)) / 4),
    ],
)
def test_metric_against_hand_computed_value(metric, expected):
    metric.update(torch.tensor([1, 3, 25, 20]), NO_TOPS)
    assert metric.compute().item() == pytest.approx(expected)


def test_metrics_accumulate_over_batches_as_one_mean():
    # Mean over predictions, not over batch means: 3 predictions then 1.
    mrr = MRR(20)
    mrr.update(torch.tensor([1, 1, 1]), NO_TOPS)
    mrr.update(torch.tensor([4]), NO_TOPS)
    assert mrr.compute().item() == pytest.approx((3 + 0.25) / 4)


def test_collection_names_and_counts():
    metrics = ranking_metrics([5, 20], prefix="test/")
    metrics.update(torch.tensor([1, 6]), NO_TOPS)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["test/recall@5"] == pytest.approx(0.5)
    assert values["test/recall@20"] == pytest.approx(1.0)
    assert values["test/mrr@20"] == pytest.approx((1 + 1 / 6) / 2)
    assert values["test/n_predictions"] == 2


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="cutoff k"):
        Recall(0)


@pytest.mark.parametrize(
    ("ties", "expected"),
    [
        # target 1 has one item above it (0.9) and is tied with two others (0.7): g = 1, e = 3
        ("pessimistic", [4.0, 1.0, 4.0]),
        ("optimistic", [2.0, 1.0, 1.0]),
        ("mean", [3.0, 1.0, 2.5]),
    ],
)
def test_tie_policies(ties, expected):
    scores = torch.tensor([[0.9, 0.7, 0.7, 0.7], [0.1, 0.5, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([1, 1, 0]), ties).tolist() == expected


def test_unknown_tie_policy():
    with pytest.raises(ValueError, match="tie policy"):
        target_ranks(torch.zeros(1, 2), torch.tensor([0]), "random")


def test_mean_ties_feed_fractional_ranks_to_the_metrics():
    mrr = MRR(20)
    mrr.update(torch.tensor([2.5]), NO_TOPS)
    assert mrr.compute().item() == pytest.approx(0.4)


def test_coverage_counts_distinct_recommended_items():
    coverage = Coverage(k=2, n_items=10)
    coverage.update(torch.zeros(2), torch.tensor([[0, 1, 9], [1, 2, 8]]))
    assert coverage.compute().item() == pytest.approx(3 / 10)  # items 0, 1, 2 within k=2


def test_popularity_bias_is_the_mean_normalised_popularity_of_the_top_k():
    counts = torch.tensor([10.0, 5.0, 1.0, 0.0])  # normalised: 1, 0.5, 0.1, 0
    bias = PopularityBias(k=2, popularity=counts)
    bias.update(torch.zeros(2), torch.tensor([[0, 1, 3], [2, 3, 0]]))
    assert bias.compute().item() == pytest.approx(((1 + 0.5) / 2 + (0.1 + 0) / 2) / 2)


def test_collection_adds_coverage_and_bias_given_counts():
    names = set(ranking_metrics([5], "t/", torch.tensor([3, 2, 1])).keys())
    assert {"t/coverage@5", "t/popularity_bias@5", "t/recall@5"} <= names


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "mean"])
def test_item_ranks_are_target_ranks_of_shared_scores(ties):
    # Ties (0.5 three times, -inf twice), a NaN and +inf: every item as the target of one row of the same scores.
    scores = torch.tensor([0.5, 0.1, 0.5, float("-inf"), 0.9, float("nan"), 0.5, float("-inf"), float("inf"), 0.2])
    every = torch.arange(len(scores))
    expected = target_ranks(scores.expand(len(scores), -1), every, ties)
    assert torch.equal(item_ranks(scores, ties), expected)
    # By hand, pessimistic: +inf 1st, 0.9 2nd, the three 0.5s 5th, 0.2 6th, 0.1 7th, -inf 9th, NaN last (10).
    if ties == "pessimistic":
        assert item_ranks(scores, ties).tolist() == [5, 7, 5, 9, 2, 10, 5, 9, 1, 6]
