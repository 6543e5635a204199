"""prior=auto: the recent-popularity prior chosen on the validation sessions after training (lstm_rec.prior,
lstm_rec.jobs.prior_choice), on hand-made scores, then through the training job's refit and top-up."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import file_overrides

from conftest import compose_config
from lstm_rec.baselines import Popularity
from lstm_rec.checkpoint import load_network
from lstm_rec.data import FileDataModule, Sessions
from lstm_rec.data.io import read_events
from lstm_rec.data.sessions import ITEM, SESSION, TIME, recent_item_counts, split_by_start_time
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import Ranking, collect_ranks, collect_ranks_offsets, evaluate, metrics_of
from lstm_rec.jobs.train import train
from lstm_rec.prior import RecentPopularity, RecentPopularitySearch

HOUR = 3600.0


class FixedScores:
    """Scores every item the same way after every prefix: `scores` (n_items,)."""

    def __init__(self, scores: list[float]) -> None:
        self.base = torch.tensor(scores)
        self.n_items = len(scores)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        return items  # one "state" per prefix; a boolean mask picks the predicted ones

    def score(self, states: torch.Tensor) -> torch.Tensor:
        return self.base.expand(len(states), -1)


def training_sessions() -> Sessions:
    """Item 2 clicked 3 times in a session that began 1 hour before the end; item 1 clicked 5 times 100 hours
    before it. Items are 1..3."""
    return Sessions(
        items=np.array([1, 1, 1, 1, 1, 2, 2, 2]),
        offsets=np.array([0, 5, 8]),
        times=np.array([0, 1, 2, 3, 4, 99 * HOUR, 99 * HOUR + 1, 99 * HOUR + 2], dtype=np.float64),
    )


# Two validation sessions whose next click is item 2 (score column 1): [1, 2] and [3, 2].
VALIDATION = [torch.tensor([[1, 2], [3, 2]])]


def test_the_search_keeps_the_prior_that_ranks_the_validation_sessions_best():
    # The network ranks item 1 (1.0) above item 2 (0.9) above item 3 (0.0): item 2 is 2nd, MRR@2 0.5. A prior of the
    # last 8 hours counts item 2 three times: weight w adds w * log(4) to it, enough to pass item 1 from w > 0.072.
    # Over 200 hours item 1's five clicks add w * log(6) to it as well, and it stays first.
    search = RecentPopularitySearch(weights=[0.05, 0.1], hours=[8, 200])
    prior, table = search.choose(
        FixedScores([1.0, 0.9, 0.0]), training_sessions(), 3, VALIDATION, "val/mrr@2", Ranking([1, 2])
    )
    rows = {(row["weight"], row["hours"]): row for row in table}
    assert list(rows) == [(0.0, 0.0), (0.05, 8.0), (0.1, 8.0), (0.05, 200.0), (0.1, 200.0)]
    assert {key: row["val/mrr@2"] for key, row in rows.items()} == {
        (0.0, 0.0): 0.5,  # 0.9 < 1.0
        (0.05, 8.0): 0.5,  # 0.9 + 0.05 log 4 = 0.969 < 1.0
        (0.1, 8.0): 1.0,  # 0.9 + 0.1 log 4 = 1.039 > 1.0
        (0.05, 200.0): 0.5,  # 0.969 < 1.0 + 0.05 log 6 = 1.090
        (0.1, 200.0): 0.5,  # 1.039 < 1.179
    }
    assert rows[(0.1, 8.0)]["val/recall@1"] == 1.0 and rows[(0.0, 0.0)]["val/recall@1"] == 0.0
    assert (prior.weight, prior.hours) == (0.1, 8.0)
    torch.testing.assert_close(prior.scores, torch.tensor([0.0, 0.1 * math.log(4), 0.0]))


def test_the_search_ranks_at_most_max_scores_at_a_time_and_chooses_the_same():
    # max_scores=3 holds one prefix's 3 scores: each of the two validation prefixes is scored alone, and every
    # candidate's metrics and the choice are those of the whole matrix (the test above).
    scorer, rows = FixedScores([1.0, 0.9, 0.0]), []
    whole = scorer.score
    scorer.score = lambda states: rows.append(len(states)) or whole(states)
    search = RecentPopularitySearch(weights=[0.05, 0.1], hours=[8, 200])
    prior, table = search.choose(scorer, training_sessions(), 3, VALIDATION, "val/mrr@2", Ranking([1, 2], max_scores=3))
    assert rows and max(rows) == 1
    expected_prior, expected = search.choose(
        FixedScores([1.0, 0.9, 0.0]), training_sessions(), 3, VALIDATION, "val/mrr@2", Ranking([1, 2])
    )
    assert table == expected
    assert (prior.weight, prior.hours) == (expected_prior.weight, expected_prior.hours) == (0.1, 8.0)


def test_the_search_keeps_no_prior_when_none_ranks_better():
    # Item 2 already ranks first: no prior can do better, and equal candidates lose to none.
    prior, table = RecentPopularitySearch(weights=[0.1], hours=[8]).choose(
        FixedScores([0.0, 1.0, 0.5]), training_sessions(), 3, VALIDATION, "val/mrr@2", Ranking([2])
    )
    assert prior is None
    assert [row["val/mrr@2"] for row in table] == [1.0, 1.0]


@pytest.mark.parametrize(("weights", "hours"), [([], [8]), ([0.1, -0.1], [8]), ([0.1], []), ([0.1], [0])])
def test_the_search_refuses_empty_or_non_positive_candidates(weights, hours):
    with pytest.raises(ValueError, match=r"prior\.(weights|hours) must be a non-empty list"):
        RecentPopularitySearch(weights=weights, hours=hours)


def test_recent_counts_of_several_sessions_count_as_one_log():
    # The window ends at the latest click of all parts: here the second part's, 50 hours after the first ends.
    first, second = (
        training_sessions(),
        Sessions(items=np.array([3, 3]), offsets=np.array([0, 2]), times=np.array([150 * HOUR, 150 * HOUR + 5])),
    )
    counts, n = recent_item_counts([first, second], 3, 60 * HOUR)  # from hour 90: first's second session, second's
    assert counts.tolist() == [0, 3, 2] and n == 2
    counts, n = recent_item_counts([first, second], 3, 10 * HOUR)
    assert counts.tolist() == [0, 0, 2] and n == 1


@pytest.fixture(scope="module")
def timed_files(tmp_path_factory):
    data = tmp_path_factory.mktemp("auto_prior")
    events = generate_events(n_sessions=2500, n_items=150, seed=7)
    events.columns = ["SessionId", "ItemId", "Time"]
    cut = int(events["SessionId"].quantile(0.9))
    events[events["SessionId"] <= cut].to_csv(data / "train.tsv", sep="\t", index=False)
    events[events["SessionId"] > cut].to_csv(data / "test.csv", index=False)
    return data


def recent_counts(frame: pd.DataFrame, ids: np.ndarray, hours: float) -> np.ndarray:
    """Clicks per item id (in the order of `ids`) of the sessions that began in the last `hours` of `frame`."""
    starts = frame.groupby(SESSION)[TIME].transform("min")
    recent = frame[starts >= frame[TIME].max() - hours * HOUR]
    return recent[ITEM].value_counts().reindex(ids, fill_value=0).to_numpy()


@pytest.mark.parametrize("refit", ["true", "top_up"])
def test_the_chosen_prior_is_tested_and_stored_and_made_from_all_the_training_data(
    timed_files, tmp_path, monkeypatch, refit
):
    # The search runs as it is; its choice is then replaced by a fixed one (weight 0.3, 2 hours), whatever the
    # synthetic log's validation preferred, so that the plumbing is checked on a prior that is surely there.
    real = RecentPopularitySearch.choose
    tables = []

    def choose_fixed(self, scorer, sessions, n_items, *args, **kwargs):
        _, table = real(self, scorer, sessions, n_items, *args, **kwargs)
        tables.append(table)
        return RecentPopularity(0.3, 2.0).fit(sessions, n_items), table

    monkeypatch.setattr(RecentPopularitySearch, "choose", choose_fixed)
    overrides = file_overrides(timed_files, "trainer.max_epochs=2", "prior=auto", f"refit={refit}")
    metrics = train(compose_config("train", overrides, tmp_path / refit))
    assert len(tables) == 1 and len(tables[0]) == 1 + 3 * 3  # no prior, then the default 3 weights x 3 hours
    assert (metrics["prior_weight"], metrics["prior_hours"]) == (0.3, 2.0)

    events = read_events(timed_files / "train.tsv", "data.train", "SessionId", "ItemId", "Time", None)
    # The selected network: the prior of the training part (the validation sessions split off), in its checkpoint.
    selected = load_network(metrics["selected_checkpoint"])
    part, _ = split_by_start_time(events, 0.1, "validation", 10_000)  # as data.valid_fraction splits it
    part = recent_counts(part, selected.item_index.ids, 2)
    assert 0 < (part > 0).sum() < len(part)
    torch.testing.assert_close(selected.prior.scores, torch.tensor(0.3 * np.log1p(part), dtype=torch.float32))
    # The refitted or topped-up network: the prior of all of data.train, in its checkpoint and in its test.
    final = load_network(metrics["checkpoint"])
    full = recent_counts(events, final.item_index.ids, 2)
    assert not np.array_equal(full[: len(part)], part)  # the validation sessions' clicks count now
    torch.testing.assert_close(final.prior.scores, torch.tensor(0.3 * np.log1p(full), dtype=torch.float32))
    assert (final.prior.weight, final.prior.hours) == (0.3, 2.0)
    datamodule = FileDataModule(test=str(timed_files / "test.csv"))
    datamodule.item_index = final.item_index
    datamodule.setup("test")
    test = datamodule.full_dataloader("test")
    assert evaluate(final.scorer(), test, [20], "test/")["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"])
    assert evaluate(final.network, test, [20], "test/")["test/mrr@20"] != pytest.approx(metrics["test/mrr@20"])


@pytest.mark.parametrize("shared", [True, False])
def test_ranks_with_offsets_are_the_ranks_of_the_offset_scores(shared):
    # A scorer with shared scores (popularity: one sort per batch) and one without rank each offset's scores as a
    # scorer of those scores would, from one pass over the batches.
    counts = np.array([5, 3, 1, 3])
    scorer = Popularity(counts) if shared else FixedScores(counts.tolist())
    offsets = [None, torch.tensor([0.0, 2.5, 0.0, 0.0]), torch.tensor([0.0, 0.0, 4.5, 0.0])]
    batches = [torch.tensor([[1, 2, 3, 4], [4, 3, 0, 0]]), torch.tensor([[2, 1, 2, 0]])]
    ranked = collect_ranks_offsets(scorer, batches, offsets, k_max=2)
    for offset, got in zip(offsets, ranked, strict=True):
        scores = torch.as_tensor(counts, dtype=torch.float32) + (0 if offset is None else offset)
        expected = collect_ranks(FixedScores(scores.tolist()), batches, k_max=2)
        torch.testing.assert_close(got.ranks, expected.ranks)
        torch.testing.assert_close(got.top_items, expected.top_items)
    # By hand, with the second offset: items 2 (5.5), 1 (5), 4 (3), 3 (1); pessimistic ties.
    assert ranked[1].ranks.tolist() == [1.0, 4.0, 3.0, 4.0, 2.0, 1.0]  # targets 2, 3, 4; 3; 1, 2
    assert ranked[1].top_items[0].tolist() == [1, 0]


@pytest.mark.parametrize("shared", [True, False])
def test_ranks_without_top_lists_are_the_same_ranks(shared):
    # k_max=0 (the choices on the validation sessions, whose metrics need only the target's rank) keeps no top lists
    # and ranks every target as k_max=2 does; Recall, MRR and NDCG come out the same.
    counts = np.array([5, 3, 1, 3])
    scorer = Popularity(counts) if shared else FixedScores(counts.tolist())
    offsets = [None, torch.tensor([0.0, 2.5, 0.0, 0.0])]
    batches = [torch.tensor([[1, 2, 3, 4], [4, 3, 0, 0]]), torch.tensor([[2, 1, 2, 0]])]
    with_tops = collect_ranks_offsets(scorer, batches, offsets, k_max=2)
    without = collect_ranks_offsets(scorer, batches, offsets, k_max=0)
    for full, bare in zip(with_tops, without, strict=True):
        torch.testing.assert_close(bare.ranks, full.ranks)
        assert bare.top_items.shape == (6, 0)
        assert metrics_of(bare, [1, 3], "val/") == metrics_of(full, [1, 3], "val/")
    assert without[1].ranks.tolist() == [1.0, 4.0, 3.0, 4.0, 2.0, 1.0]  # by hand, as in the test above
