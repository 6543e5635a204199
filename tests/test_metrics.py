import math

import pytest
import torch

from lstm_rec.metrics import MRR, NDCG, Recall, pessimistic_ranks, ranking_metrics


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
    assert pessimistic_ranks(scores, targets).tolist() == [1, 3, 3, 4]


def test_nan_target_score_gets_the_worst_rank():
    scores = torch.tensor([[float("nan"), 1.0, 2.0]])
    assert pessimistic_ranks(scores, torch.tensor([0])).tolist() == [3]


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
    metric.update(torch.tensor([1, 3, 25, 20]))
    assert metric.compute().item() == pytest.approx(expected)


def test_metrics_accumulate_over_batches_as_one_mean():
    # Mean over predictions, not over batch means: 3 predictions then 1.
    mrr = MRR(20)
    mrr.update(torch.tensor([1, 1, 1]))
    mrr.update(torch.tensor([4]))
    assert mrr.compute().item() == pytest.approx((3 + 0.25) / 4)


def test_collection_names_and_counts():
    metrics = ranking_metrics([5, 20], prefix="test/")
    metrics.update(torch.tensor([1, 6]))
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["test/recall@5"] == pytest.approx(0.5)
    assert values["test/recall@20"] == pytest.approx(1.0)
    assert values["test/mrr@20"] == pytest.approx((1 + 1 / 6) / 2)
    assert values["test/n_predictions"] == 2


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="cutoff k"):
        Recall(0)
