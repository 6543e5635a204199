"""The fine-tune / retrain / keep protocol (lstm_rec.jobs.fresh): its known / new split of the predictions."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_RECIPE
from lstm_rec.data.io import read_events
from lstm_rec.data.sessions import SESSION, TIME
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import RankedPredictions, prediction_targets, rank_batch
from lstm_rec.jobs.fresh import DAY_SECONDS, _latest, _window, benchmark_fresh, known_and_new, split_days, table


def _ranked(ranks: list[float]) -> RankedPredictions:
    n = len(ranks)
    return RankedPredictions(
        torch.tensor(ranks, dtype=torch.float64), torch.zeros(n, 20, dtype=torch.long), torch.ones(n), torch.ones(n)
    )


def test_known_and_new_split_the_predictions_by_the_initial_catalog():
    # Targets 0 and 1 are below n_initial = 5 (known), 5 and 7 are not (new); ranks 1 and 25 / 3 and 2.
    metrics = known_and_new(_ranked([1.0, 3.0, 25.0, 2.0]), torch.tensor([0, 5, 1, 7]), n_initial=5)
    assert metrics["n_predictions"] == 4 and metrics["known/n_predictions"] == 2 and metrics["new/n_predictions"] == 2
    assert metrics["recall@20"] == pytest.approx(3 / 4) and metrics["mrr@20"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 4)
    assert metrics["known/recall@20"] == pytest.approx(1 / 2) and metrics["known/mrr@20"] == pytest.approx(1 / 2)
    assert metrics["new/recall@20"] == pytest.approx(1.0) and metrics["new/mrr@20"] == pytest.approx(
        (1 / 3 + 1 / 2) / 2
    )


def test_a_part_without_predictions_has_no_metrics_and_a_count_of_0():
    metrics = known_and_new(_ranked([2.0, 30.0]), torch.tensor([0, 1]), n_initial=5)
    assert metrics["new/n_predictions"] == 0 and metrics["new/recall@20"] is None and metrics["new/mrr@20"] is None
    assert metrics["known/recall@20"] == pytest.approx(1 / 2)
    json.dumps(metrics, allow_nan=False)  # strict JSON: null, not NaN


class _IndexScorer:
    """Scores item column j with -j, so a target's (pessimistic) rank is its column + 1."""

    n_items = 9

    def encode(self, items):
        return items[..., None].float()

    def score(self, states):
        return -torch.arange(self.n_items, dtype=torch.float32).expand(len(states), -1)


def test_prediction_targets_follow_the_order_rank_batch_ranks_in():
    batch = torch.tensor([[3, 5, 0, 0], [2, 4, 6, 9], [7, 1, 8, 0]])
    ranked = rank_batch(_IndexScorer(), batch)
    assert prediction_targets(batch).tolist() == [4, 3, 5, 8, 0, 7]
    torch.testing.assert_close(ranked.ranks, prediction_targets(batch).double() + 1)


def _shop(n_days: int) -> pd.DataFrame:
    """Sessions spread over n_days + 1 days; each day clicks 20 items more than the day before."""
    events = generate_events(n_sessions=3000, n_items=120, seed=5)
    day = events["session"] * (n_days + 1) // 3000
    events = events[events["item"] <= 60 + 20 * day].copy()
    elapsed = events["time"] - events["time"].min()  # stretched over the days, in session order
    events["time"] = elapsed / elapsed.max() * (n_days + 1) * DAY_SECONDS * 0.999
    return events.rename(columns={"session": "SessionId", "item": "ItemId", "time": "Time"})


def test_fresh_protocol_reports_known_and_new_items_and_keep_never_hits_a_new_one(tmp_path):
    data = tmp_path / "log.parquet"
    _shop(2).to_parquet(data, index=False)
    overrides = [*TINY_RECIPE, "model.hidden=16", "model.embedding_dim=16", "data.batch_size=64", "num_threads=1",
                 "refit=false", "seed=3"]  # fmt: skip
    results = benchmark_fresh(data, tmp_path / "out", n_days=2, epochs=2, fine_tune_epochs=1, overrides=overrides)
    rows = {row["strategy"]: row for row in results["days"]}
    assert set(rows) == {"a", "b", "c"} and all(row["tested_on_day"] == 2 for row in rows.values())
    for row in rows.values():
        assert row["known/n_predictions"] + row["new/n_predictions"] == row["n_predictions"]
        assert row["new/n_predictions"] > 0  # day 2 clicks items that came after the initial part
        weighted = row["known/recall@20"] * row["known/n_predictions"] + row["new/recall@20"] * row["new/n_predictions"]
        assert weighted / row["n_predictions"] == pytest.approx(row["recall@20"])
    assert rows["c"]["new/recall@20"] == 0.0  # the kept model does not know the new items
    assert rows["a"]["new/recall@20"] > 0.0 and rows["b"]["new/recall@20"] > 0.0
    written = json.loads((tmp_path / "out" / "fresh.json").read_text())
    assert written["mean"]["c"]["new/recall@20"] == 0.0
    assert np.isclose(written["mean"]["a"]["known/recall@20"], rows["a"]["known/recall@20"])
    assert "recall@20 known / new" in table(results)


def test_days_can_be_any_length_of_the_time_column():
    # The log ends at 14,040 s. With hour-long days, counted back from the end, sessions 5 and 6 (starting at 11,520 and
    # 14,040 s) are the last day, 3 and 4 (7,200 and 9,000 s) the one before, 1 and 2 (0 and 3,600 s) the initial part.
    events = pd.DataFrame(
        {
            "session": [1, 1, 2, 3, 4, 5, 6],
            "item": [1, 2, 3, 4, 5, 6, 7],
            "time": [0, 60, 3600, 7200, 9000, 11520, 14040],
        }
    )
    initial, days = split_days(events, n_days=2, day_seconds=3600)
    assert sorted(initial["session"].unique()) == [1, 2]
    assert [sorted(day["session"].unique()) for day in days] == [[3, 4], [5, 6]]
    with pytest.raises(ValueError, match=r"spans 3\.9 days of 3600 s"):
        split_days(events, n_days=4, day_seconds=3600)
    with pytest.raises(ValueError, match="day_seconds must be positive"):
        benchmark_fresh(Path("unused.parquet"), Path("unused"), 2, 1, 1, [], day_seconds=0)


def test_replayed_days_follow_the_split_rule_at_the_boundary():
    """A session that starts exactly n days before the log's last click lies in its last n days, both for
    split_days and for the replayed days taken from the initial part (_latest, via _window)."""
    day = 100.0
    events = pd.DataFrame(
        {SESSION: [1, 1, 2, 2, 3, 3, 4, 4], "item": [1, 2, 1, 3, 2, 3, 1, 2],
         TIME: [0.0, 10.0, 200.0, 210.0, 300.0, 310.0, 400.0, 400.0]}
    )  # fmt: skip
    # The last click is at 400: session 2 starts exactly 2 days before it, session 3 exactly 1.
    initial, (before_last, last) = split_days(events, 2, day)
    assert sorted(initial[SESSION].unique()) == [1]
    assert sorted(before_last[SESSION].unique()) == [2]
    assert sorted(last[SESSION].unique()) == [3, 4]
    assert sorted(_latest(events, 1, day)[SESSION].unique()) == [3, 4]
    assert sorted(_latest(events, 2, day)[SESSION].unique()) == [2, 3, 4]
    # Within sessions 1-3 alone (last click 310), session 2 starts 1.1 days back: day 2, session 3 day 1.
    head = events[events[SESSION] < 4]
    assert sorted(_latest(head, 1, day)[SESSION].unique()) == [3]
    # Day 1 fine-tuned with one replayed day: the initial part's last day, then day 1's sessions.
    window = _window(events[events[SESSION] <= 2], [last], 1, 1, day)
    assert sorted(window[SESSION].unique()) == [2, 3, 4]


def test_a_log_in_milliseconds_is_cut_into_the_same_days_and_each_run_reads_its_files_in_seconds(tmp_path, monkeypatch):
    import lstm_rec.jobs.train as train_module
    from lstm_rec.jobs.fresh import _train

    # The log's own numbers in ms: read_events takes them as seconds (data.time_unit=auto), so the days are 86,400 s.
    events = pd.DataFrame({"SessionId": [1, 1, 2, 2, 3, 3], "ItemId": [1, 2, 2, 3, 1, 3], "Time": [0, 60, 1, 2, 3, 4]})
    events["Time"] = (1_430_438_400 + 86_400 * (events["SessionId"] - 1) + events["Time"]) * 1000
    events.to_parquet(tmp_path / "ms.parquet", index=False)
    initial, days = split_days(read_events(tmp_path / "ms.parquet", "data"), n_days=2)
    assert initial["session"].unique().tolist() == [1] and [d["session"].unique().tolist() for d in days] == [[2], [3]]
    # The day files it writes hold those seconds: every run reads them as seconds, whatever the overrides say.
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg: seen.append(cfg) or {})
    day = days[0].rename(columns={"session": "SessionId", "item": "ItemId", "time": "Time"})
    day.to_parquet(tmp_path / "d.parquet", index=False)
    _train("a", tmp_path / "d.parquet", tmp_path / "d.parquet", 1, ["data.time_unit=ms"], tmp_path, DAY_SECONDS)
    assert seen[0].data.time_unit == "s"
