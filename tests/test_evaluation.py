import numpy as np
import pytest
import torch

from lstm_rec.baselines import Popularity, SessionPopularity
from lstm_rec.data import ItemIndex
from lstm_rec.evaluation import (
    CatalogScorer,
    best_row,
    breakdown,
    collect_ranks,
    eval_mode,
    evaluate,
    prediction_layout,
    rank_batch,
)
from lstm_rec.model import SessionLSTM


class FixedScores:
    """A scorer that scores items by a fixed vector, like popularity, with a known rank for each item."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.n_items = len(scores)

    def encode(self, items):
        return torch.zeros((*items.shape, 0))

    def score(self, states):
        return self.scores.expand(len(states), -1)


def test_padding_is_never_ranked():
    # Scores of items 1..4: item 1 ranks 1st, item 3 ranks 3rd (tied with item 4).
    scorer = FixedScores([0.9, 0.5, 0.2, 0.2])
    batch = torch.tensor([[2, 1, 3], [4, 1, 0]])  # second session is padded
    # targets: 1 (rank 1), 3 (rank 4: tied with item 4, pessimistic), then 1 (rank 1); padding skipped
    ranked = rank_batch(scorer, batch, k_max=2)
    assert ranked.ranks.tolist() == [1, 4, 1]
    assert ranked.top_items.tolist() == [[0, 1]] * 3
    assert ranked.positions.tolist() == [1, 2, 1]
    assert ranked.lengths.tolist() == [3, 3, 2]


def test_chunked_scoring_gives_the_same_ranks():
    net = SessionLSTM(n_items=50, embedding_dim=8, hidden=8).eval()
    batch = torch.randint(1, 51, (6, 7))
    batch[3, 4:] = 0
    with torch.no_grad():
        chunked, whole = rank_batch(net, batch, max_scores=50), rank_batch(net, batch)
    assert torch.equal(chunked.ranks, whole.ranks) and torch.equal(chunked.top_items, whole.top_items)


def test_a_model_that_scores_everything_equally_gets_the_worst_rank():
    scorer = FixedScores([1.0] * 10)
    metrics = evaluate(scorer, [torch.tensor([[1, 2, 3], [4, 5, 0]])], ks=[5, 20], prefix="t/")
    assert metrics["t/n_predictions"] == 3
    assert metrics["t/recall@20"] == pytest.approx(1.0)  # rank 10 <= 20
    assert metrics["t/recall@5"] == 0.0
    assert metrics["t/mrr@20"] == pytest.approx(0.1)


def test_popularity_ranks_by_training_counts():
    pop = Popularity(np.array([5, 1, 3]))  # items 1, 2, 3
    metrics = evaluate(pop, [torch.tensor([[2, 1, 3, 2]])], ks=[1, 2], prefix="p/")
    # targets 1 (rank 1), 3 (rank 2), 2 (rank 3)
    assert metrics["p/recall@1"] == pytest.approx(1 / 3)
    assert metrics["p/recall@2"] == pytest.approx(2 / 3)
    assert metrics["p/mrr@2"] == pytest.approx((1 + 0.5) / 3)


def test_breakdown_by_position_and_length():
    scorer = FixedScores([0.9, 0.5, 0.2, 0.1])  # item 1 ranks 1st, item 2 2nd, item 3 3rd, item 4 4th
    batches = [torch.tensor([[4, 1, 2, 3], [4, 2, 0, 0]])]
    ranked = collect_ranks(scorer, batches)
    # predictions: (pos 1, len 4, rank 1), (pos 2, len 4, rank 2), (pos 3, len 4, rank 3), (pos 1, len 2, rank 2)
    by_position = breakdown(ranked, [1], "position").set_index("position")
    assert by_position.loc["1", "recall@1"] == pytest.approx(0.5)
    assert by_position.loc["1", "mrr@1"] == pytest.approx(0.5)
    assert by_position.loc["3", "n_predictions"] == 1
    by_length = breakdown(ranked, [2], "length", max_group=3).set_index("length")
    assert list(by_length.index) == ["2", "3+"]
    assert by_length.loc["3+", "mrr@2"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_a_catalog_scorer_ranks_unknown_targets_last_in_any_catalog_order():
    # The model knows items 10, 20, 30 (scores 0.2, 0.9, 0.5); the catalog adds 40 and 50.
    own = ItemIndex.from_items(np.array([10, 20, 30]))
    scorer = FixedScores([0.2, 0.9, 0.5])
    appended = own.grown(np.array([40, 50]))  # 10 20 30 40 50: the fast path
    shuffled = ItemIndex(ids=np.array([50, 30, 40, 10, 20]), counts=np.ones(5, dtype=np.int64))
    for catalog in (appended, shuffled):
        wrapped = CatalogScorer(scorer, own, catalog)
        assert wrapped.appended == (catalog is appended) and wrapped.n_items == 5
        column = {item: i + 1 for i, item in enumerate(catalog.ids.tolist())}
        batch = torch.tensor([[column[10], column[40], column[20], column[50]]])
        # Targets 40 (unknown: rank 5, last, pessimistic), 20 (rank 1), 50 (rank 5).
        assert rank_batch(wrapped, batch).ranks.tolist() == [5, 1, 5]
        scores = wrapped.score(torch.zeros((1, 0)))
        assert scores[0, column[20] - 1] == pytest.approx(0.9) and scores[0, column[40] - 1] == float("-inf")


class Unshared:
    """A scorer's scores without its shared_scores: rank_batch takes the full score matrix."""

    def __init__(self, scorer):
        self.scorer, self.n_items = scorer, scorer.n_items

    def encode(self, items):
        return self.scorer.encode(items)

    def score(self, states):
        return self.scorer.score(states)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "mean"])
def test_shared_scores_rank_as_the_full_score_matrix(ties):
    # Popularity with many tied counts, on a catalog that adds unknown items in a shuffled order (-inf scores).
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, 60)
    own = ItemIndex(ids=np.arange(100, 160), counts=counts)
    catalog = ItemIndex(ids=rng.permutation(np.arange(100, 170)), counts=np.ones(70, dtype=np.int64))
    for scorer in (Popularity(counts), CatalogScorer(Popularity(counts), own, catalog)):
        batches = [torch.randint(1, scorer.n_items + 1, (5, 9)) for _ in range(3)]
        batches[1][2, 4:] = 0
        assert scorer.shared_scores is not None
        fast, slow = (collect_ranks(s, batches, k_max=20, ties=ties) for s in (scorer, Unshared(scorer)))
        for field in ("ranks", "top_items", "positions", "lengths"):
            assert torch.equal(getattr(fast, field), getattr(slow, field)), field
    assert SessionPopularity(counts).shared_scores is None  # the session's items change its scores


def test_best_row_takes_the_highest_metric_and_the_earlier_row_on_ties():
    table = [{"val/mrr@20": 0.30, "val/recall@20": 0.6}, {"val/mrr@20": 0.32, "val/recall@20": 0.5}]
    table += [{"val/mrr@20": 0.32, "val/recall@20": 0.7}, {"val/mrr@20": 0.31, "val/recall@20": 0.8}]
    assert best_row(table, "val/mrr@20") == 1  # rows 1 and 2 tie: the earlier one
    assert best_row(table, "val/recall@20") == 3
    assert best_row(table[:1], "val/mrr@20") == 0  # the unchanged candidate alone


def test_prediction_layout_lists_each_next_item_with_its_position_and_session_length():
    batch = torch.tensor([[3, 5, 2, 0], [7, 4, 0, 0]])  # sessions of 3 and 2 clicks, right-padded
    inputs, is_target, targets, (positions, lengths) = prediction_layout(batch)
    assert inputs.tolist() == [[3, 5, 2], [7, 4, 0]]
    assert is_target.tolist() == [[True, True, False], [True, False, False]]
    assert targets.tolist() == [4, 1, 3]  # score columns: item index - 1, row by row
    assert positions.tolist() == [1, 2, 1] and lengths.tolist() == [3, 3, 2]


def test_eval_mode_switches_dropout_off_and_restores_training_mode_even_after_an_error():
    net = torch.nn.Dropout(0.5)
    with eval_mode(net):
        assert not net.training
    assert net.training
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert net.training
    net.eval()
    with eval_mode(net):
        pass
    assert not net.training  # a scorer in eval mode stays there
