import logging

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_events
from lstm_rec.data import FileDataModule, ItemIndex, SyntheticDataModule
from lstm_rec.data.batching import LengthGroupedBatchSampler, SessionBatches, session_windows
from lstm_rec.data.io import DataFileError, read_events, time_unit_of
from lstm_rec.data.sessions import Sessions, recent_item_counts, split_by_start_time, to_sessions
from lstm_rec.data.synthetic import generate_events

# Session 1: a b c; session 2: b c (times out of order in the file); session 3: c (too short).
ROWS = [(1, "a", 10.0), (2, "c", 22.0), (1, "b", 11.0), (1, "c", 12.0), (2, "b", 21.0), (3, "c", 30.0)]


def test_read_sorts_by_session_then_time(tmp_path):
    events = read_events(write_events(tmp_path / "x.tsv", ROWS), "data.train")
    assert events["session"].tolist() == [1, 1, 1, 2, 2, 3]
    assert events["item"].tolist() == ["a", "b", "c", "b", "c", "c"]


@pytest.mark.parametrize("name", ["x.csv", "x.tsv", "x.parquet", "x.csv.gz"])
def test_formats_by_extension(tmp_path, name):
    sep = "," if ".csv" in name else "\t"
    events = read_events(write_events(tmp_path / name, ROWS, sep=sep), "data.train")
    assert len(events) == len(ROWS)


def test_configurable_columns_and_separator(tmp_path):
    path = write_events(tmp_path / "x.txt", ROWS, columns=("sid", "iid", "ts"), sep=";")
    events = read_events(path, "data.train", session_col="sid", item_col="iid", time_col="ts", sep=";")
    assert events["item"].tolist()[:3] == ["a", "b", "c"]


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.test: no file at .*nope\.tsv"):
        read_events(tmp_path / "nope.tsv", "data.test")


def test_misnamed_column_names_what_was_found(tmp_path):
    path = write_events(tmp_path / "x.csv", ROWS, columns=("SessionId", "Item", "Time"), sep=",")
    with pytest.raises(DataFileError, match=r"no column \['ItemId'\].*columns found: \['SessionId', 'Item', 'Time'\]"):
        read_events(path, "data.train")


def test_wrong_separator_hints_at_sep(tmp_path):
    path = write_events(tmp_path / "x.csv", ROWS, sep="\t")
    with pytest.raises(DataFileError, match=r"data\.sep"):
        read_events(path, "data.train")


def test_non_numeric_time_names_the_row(tmp_path):
    rows = [*ROWS[:2], (1, "b", "yesterday")]
    with pytest.raises(DataFileError, match=r"column 'Time'.*numeric.*data row 3 has 'yesterday'"):
        read_events(write_events(tmp_path / "x.tsv", rows), "data.train")


def test_datetime_times_become_seconds(tmp_path):
    frame = pd.DataFrame(
        {"SessionId": [1, 1], "ItemId": [5, 6], "Time": pd.to_datetime(["2014-04-01 00:00:00", "2014-04-01 00:00:10"])}
    )
    frame.to_parquet(tmp_path / "x.parquet")
    events = read_events(tmp_path / "x.parquet", "data.train")
    assert np.diff(events["time"].to_numpy()).tolist() == [10.0]


def test_empty_cells_are_an_error_not_a_silent_drop(tmp_path):
    (tmp_path / "x.csv").write_text("SessionId,ItemId,Time\n1,5,1.0\n1,,2.0\n")
    with pytest.raises(DataFileError, match=r"'ItemId'.*empty or NaN in 1 rows, first at data row 2"):
        read_events(tmp_path / "x.csv", "data.train")


def test_unknown_extension(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataFileError, match="cannot tell the format"):
        read_events(tmp_path / "x.json", "data.train")


def test_item_index_reserves_zero_and_counts_clicks():
    index = ItemIndex.from_items(np.array([30, 10, 30, 20, 30]))
    assert index.ids.tolist() == [10, 20, 30]
    assert index.counts.tolist() == [1, 1, 3]
    assert index.lookup(np.array([10, 30, 99])).tolist() == [1, 3, 0]


def test_recounted_keeps_the_items_and_takes_the_other_indexs_counts():
    index = ItemIndex(ids=np.array([30, 10, 99]), counts=np.array([5, 6, 7]))  # a grown index: not sorted
    other = ItemIndex.from_items(np.array([10, 10, 30, 40]))  # 10 twice, 30 once, 40 not in index
    recounted = index.recounted(other)
    assert recounted.ids.tolist() == [30, 10, 99]
    assert recounted.counts.tolist() == [1, 2, 0]


def test_unknown_items_are_dropped_then_short_sessions(caplog):
    index = ItemIndex.from_items(np.array(["a", "b", "c"]))
    events = pd.DataFrame(
        {
            "session": [1, 1, 1, 2, 2, 3, 3],
            "item": ["a", "x", "b", "c", "x", "x", "y"],
            "time": [1.0, 2, 3, 4, 5, 6, 7],
        }
    )
    with caplog.at_level(logging.INFO):
        sessions = to_sessions(events, index, "test")
    # session 1 keeps a, b (neighbours now); session 2 keeps only c and is dropped; session 3 is emptied
    assert sessions.items.tolist() == [1, 2]
    assert sessions.offsets.tolist() == [0, 2]
    assert "dropped 4 of 7 rows" in caplog.text
    assert "(1 sessions emptied)" in caplog.text
    assert "dropped 1 of 2 sessions shorter than 2" in caplog.text


def test_empty_after_filtering_is_an_error():
    index = ItemIndex.from_items(np.array([1, 2]))
    events = pd.DataFrame({"session": [1, 1], "item": [7, 8], "time": [1.0, 2.0]})
    with pytest.raises(ValueError, match="validation is empty after filtering"):
        to_sessions(events, index, "validation")


def test_split_takes_the_sessions_that_start_last():
    events = pd.DataFrame(
        {"session": [1, 1, 2, 2, 3, 3, 4, 4], "item": list("abababab"), "time": [5.0, 6, 1, 2, 9, 10, 3, 4]}
    )
    train, held = split_by_start_time(events, 0.5, "validation")
    assert sorted(held["session"].unique()) == [1, 3]
    assert sorted(train["session"].unique()) == [2, 4]


def test_split_holds_out_no_more_than_max_predictions(caplog):
    # Sessions by start time: 2 (3 clicks), 4 (2), 1 (4), 3 (3) -> predictions, latest first: 2, 3, 1, 2.
    events = pd.DataFrame(
        {
            "session": [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4],
            "item": list("abababababab"),
            "time": [5.0, 5.5, 6, 6.5, 1, 2, 2.5, 9, 10, 11, 3, 4],
        }
    )
    caplog.set_level(logging.INFO)
    # 3 predictions: the latest session (2) is not enough, the latest two (5) reach it.
    train, held = split_by_start_time(events, 0.75, "validation", max_predictions=3)
    assert sorted(held["session"].unique()) == [1, 3] and sorted(train["session"].unique()) == [2, 4]
    assert "the last 2 of 4 sessions by start time (7 events; capped at 3 predictions)" in caplog.text
    # The fraction still rules when it holds out fewer.
    _, held = split_by_start_time(events, 0.25, "validation", max_predictions=3)
    assert held["session"].unique().tolist() == [3]
    # A cap above everything leaves the fraction's split.
    _, held = split_by_start_time(events, 0.75, "validation", max_predictions=100)
    assert sorted(held["session"].unique()) == [1, 3, 4]
    with pytest.raises(ValueError, match="most predictions held out for validation must be positive"):
        split_by_start_time(events, 0.5, "validation", max_predictions=0)


def test_file_datamodule_caps_the_validation_split(tmp_path):
    # 20 sessions of 3 clicks (2 predictions each), starting in session order: 10 % is 2 sessions, a cap of 3
    # predictions holds out the latest 2 as well, a cap of 2 only the latest one.
    rows = [(s, 1 + (s + k) % 4, 100 * s + k) for s in range(20) for k in range(3)]
    train = write_events(tmp_path / "train.tsv", rows)
    test = write_events(tmp_path / "test.tsv", [(99, 1, 5000), (99, 2, 5001)])
    for cap, held in ((None, [18, 19]), (3, [18, 19]), (2, [19])):
        datamodule = FileDataModule(train=str(train), test=str(test), valid_fraction=0.1, valid_max_predictions=cap)
        datamodule.setup("fit")
        assert datamodule.valid_sessions.n_sessions == len(held)
        assert datamodule.train_sessions.n_sessions == 20 - len(held)


def test_windows_keep_every_target_once():
    # Lengths 2, 5, 7 with max_len 3: targets 1, 4, 6 -> windows 1, 2 (3 + 1), 2 (3 + 3).
    sessions = Sessions(items=np.arange(1, 15), offsets=np.array([0, 2, 7, 14]))
    starts, lengths = session_windows(sessions, 3)
    assert starts.tolist() == [0, 2, 5, 7, 10]
    assert lengths.tolist() == [2, 4, 2, 4, 4]
    assert (lengths - 1).sum() == sessions.n_targets
    assert np.flatnonzero(~sessions.is_target).tolist() == [0, 2, 7]  # each session's first click
    batch = SessionBatches(sessions, 3)[np.arange(5)]
    targets = batch[:, 1:][batch[:, 1:] > 0]
    expected = np.concatenate([sessions.session(s)[1:] for s in range(3)])
    assert sorted(targets.tolist()) == sorted(expected.tolist())


def test_batches_are_right_padded():
    sessions = Sessions(items=np.array([4, 5, 6, 7, 8]), offsets=np.array([0, 3, 5]))
    batch = SessionBatches(sessions)[np.array([1, 0])]
    assert batch.tolist() == [[7, 8, 0], [4, 5, 6]]
    assert batch.dtype == torch.int64


def test_length_grouping_keeps_padding_small_and_covers_everything():
    lengths = np.random.default_rng(0).integers(2, 40, size=5000)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=64, shuffle=True, seed=1)
    batches = list(sampler)
    assert np.sort(np.concatenate(batches)).tolist() == list(range(5000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() < 1.1  # random batches would pad about 1.8x
    sampler.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, sampler, strict=True))


def test_synthetic_data_is_deterministic_and_zipf_like():
    first, second = generate_events(n_sessions=500, seed=3), generate_events(n_sessions=500, seed=3)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(generate_events(n_sessions=500, seed=4))
    counts = first["item"].value_counts().to_numpy()
    assert counts[:10].sum() > 0.1 * counts.sum()  # a head of popular items
    assert first.groupby("session").size().min() >= 2


def test_file_datamodule_builds_the_index_from_train_only(tmp_path):
    train = write_events(tmp_path / "train.tsv", [(1, 10, 1.0), (1, 11, 2.0), (2, 11, 3.0), (2, 12, 4.0)])
    valid = write_events(tmp_path / "valid.tsv", [(3, 10, 5.0), (3, 11, 6.0)])
    test = write_events(tmp_path / "test.tsv", [(4, 12, 7.0), (4, 99, 8.0), (4, 10, 9.0)])
    dm = FileDataModule(train=str(train), valid=str(valid), test=str(test))
    dm.setup("fit")
    assert dm.item_index.ids.tolist() == [10, 11, 12]
    assert dm.test_sessions.items.tolist() == [3, 1]  # 99 is unseen in training: dropped
    assert dm.train_sessions.n_sessions == 2


def test_items_only_in_the_held_out_validation_stay_in_the_test_as_misses(tmp_path, caplog):
    # Sessions 1-9 (items 10, 11, 12) train; session 10, the newest (10 13 11), is held out for validation and is the
    # only one with item 13. The test's clicks on 13 are kept: the test indexes all of data.train's items.
    rows = [(s, 10 + (s + k) % 3, 100 * s + k) for s in range(1, 10) for k in range(3)]
    rows += [(10, 10, 1000), (10, 13, 1001), (10, 11, 1002)]
    train = write_events(tmp_path / "train.tsv", rows)
    test = write_events(tmp_path / "test.tsv", [(20, 10, 5000), (20, 13, 5001), (20, 11, 5002), (21, 13, 6000),
                                                (21, 12, 6001), (22, 99, 7000), (22, 10, 7001)])  # fmt: skip
    dm = FileDataModule(train=str(train), test=str(test), valid_fraction=0.1)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.item_index.ids.tolist() == [10, 11, 12]  # the model's items
    assert dm.test_catalog.ids.tolist() == [10, 11, 12, 13]  # then the held-out one
    assert dm.test_sessions.items.tolist() == [1, 4, 2, 4, 3]  # 99 is in no training data: dropped, as before
    assert "1 items of the training data appear only in the validation sessions" in caplog.text
    assert "test: 1 of its 3 next-item predictions are on items only in the validation sessions" in caplog.text
    # The network's scores for 10, 11, 12 (a fixed vector); 13 is a blank input and a miss as a target.
    seen = []

    class Fixed(torch.nn.Module):
        n_items = 3

        def encode(self, items):
            seen.append(items.clone())
            return torch.zeros((*items.shape, 0))

        def score(self, states):
            return torch.tensor([0.5, 0.9, 0.1]).expand(len(states), -1)

    scorer = dm.test_scorer(Fixed())
    assert scorer.n_items == 4
    ranks = evaluate_ranks(scorer, dm)
    # Targets: 13 (miss: rank 4, last), 11 (rank 1), 12 (rank 3), in the loader's order of the sessions.
    assert sorted(ranks) == [1, 3, 4]
    # The sessions' inputs (all clicks but the last of the padded batch), 10 13 and 13 12, reach the network as
    # 1 0 and 0 3: 13 is its blank item.
    assert sorted(seen[0].tolist()) == [[0, 3], [1, 0]]


def evaluate_ranks(scorer, dm):
    from lstm_rec.evaluation import collect_ranks

    return collect_ranks(scorer, dm.full_dataloader("test")).ranks.tolist()


def test_a_held_out_validation_with_no_new_items_keeps_the_models_index_for_the_test(tmp_path):
    rows = [(s, 10 + (s + k) % 3, 100 * s + k) for s in range(1, 11) for k in range(3)]
    train = write_events(tmp_path / "train.tsv", rows)
    test = write_events(tmp_path / "test.tsv", [(20, 10, 5000), (20, 11, 5001)])
    dm = FileDataModule(train=str(train), test=str(test), valid_fraction=0.1)
    dm.setup("fit")
    assert dm.valid_carved and dm.test_catalog is None
    scorer = object()
    assert dm.test_scorer(scorer) is scorer


def test_file_datamodule_needs_a_test_file_before_any_training(tmp_path):
    train = write_events(tmp_path / "train.tsv", [(1, 10, 1.0), (1, 11, 2.0)])
    with pytest.raises(ValueError, match=r"data\.test is not set"):
        FileDataModule(train=str(train)).setup("fit")


def test_file_datamodule_without_train_needs_an_item_index(tmp_path):
    test = write_events(tmp_path / "test.tsv", [(4, 12, 7.0), (4, 10, 9.0)])
    with pytest.raises(ValueError, match=r"data\.train is not set"):
        FileDataModule(test=str(test)).setup("test")
    dm = FileDataModule(test=str(test))
    dm.item_index = ItemIndex.from_items(np.array([10, 12]))
    dm.setup("test")
    assert dm.test_sessions.items.tolist() == [2, 1]


def test_synthetic_datamodule_splits_train_valid_test():
    dm = SyntheticDataModule(n_sessions=1000, n_items=100, test_fraction=0.1, valid_fraction=0.2)
    dm.setup("fit")
    assert dm.valid_sessions.n_sessions == pytest.approx(180, abs=10)
    assert dm.test_sessions.n_sessions == pytest.approx(100, abs=10)
    assert dm.train_sessions.n_sessions + dm.valid_sessions.n_sessions + dm.test_sessions.n_sessions <= 1000


def test_recent_item_counts_take_the_sessions_begun_in_the_last_hours():
    # Sessions begin at hours 0, 10 and 20; the data ends at hour 21. Items 1..4.
    hour = 3600.0
    sessions = Sessions(
        items=np.array([1, 2, 2, 3, 2, 4, 4]),
        offsets=np.array([0, 2, 4, 7]),
        times=np.array([0, 1, 10, 11, 20, 20.5, 21]) * hour,
    )
    counts, n = recent_item_counts(sessions, n_items=4, seconds=2 * hour)  # from hour 19: session 3
    assert (counts.tolist(), n) == ([0, 1, 0, 2], 1)
    # From hour 10.5: session 2 began before, so it does not count although its 2nd click is later.
    counts, n = recent_item_counts(sessions, n_items=4, seconds=10.5 * hour)
    assert (counts.tolist(), n) == ([0, 1, 0, 2], 1)
    counts, n = recent_item_counts(sessions, n_items=4, seconds=12 * hour)  # from hour 9: sessions 2 and 3
    assert (counts.tolist(), n) == ([0, 2, 1, 2], 2)
    counts, n = recent_item_counts(sessions, n_items=5, seconds=1e9)
    assert (counts.tolist(), n) == ([1, 3, 1, 2, 0], 3)


def test_recent_item_counts_need_click_times():
    with pytest.raises(ValueError, match="needs click times"):
        recent_item_counts(Sessions(items=np.array([1, 2]), offsets=np.array([0, 2])), n_items=2, seconds=60.0)


def test_validation_can_take_a_fixed_sample_of_sessions():
    datamodule = SyntheticDataModule(n_sessions=2000, n_items=50, valid_fraction=0.2, valid_sample=100, seed=3)
    datamodule.setup("fit")
    first = torch.cat([batch[batch > 0] for batch in datamodule.val_dataloader()])
    again = torch.cat([batch[batch > 0] for batch in datamodule.val_dataloader()])
    assert torch.equal(first, again)  # the same sessions every epoch
    sampled = sum(int((batch > 0).any(dim=1).sum()) for batch in datamodule.val_dataloader())
    full = sum(int((batch > 0).any(dim=1).sum()) for batch in datamodule.full_dataloader("valid"))
    assert sampled == 100 and full == datamodule.valid_sessions.n_sessions > 300
    sessions = datamodule.valid_sessions.subset(np.array([2, 0]))
    assert sessions.session(0).tolist() == datamodule.valid_sessions.session(2).tolist()
    assert sessions.session(1).tolist() == datamodule.valid_sessions.session(0).tolist()
    with pytest.raises(ValueError, match=r"data\.valid_sample must be a positive number"):
        SyntheticDataModule(valid_sample=0)


# Unix seconds of April 2015 (retailrocket-sessions' time): session 1 spans 100 s, session 2 ten hours.
SECONDS_ROWS = [(1, 5, 1430438490.0), (1, 6, 1430438590.0), (2, 5, 1430438500.0), (2, 7, 1430474500.0)]


@pytest.mark.parametrize(("unit", "per_second"), [("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_unix_times_in_a_finer_unit_are_read_as_seconds_and_logged(tmp_path, caplog, unit, per_second):
    seconds = read_events(write_events(tmp_path / "s.parquet", SECONDS_ROWS), "data.train")
    rows = [(session, item, int(time) * per_second) for session, item, time in SECONDS_ROWS]
    with caplog.at_level(logging.INFO):
        finer = read_events(write_events(tmp_path / f"{unit}.parquet", rows), "data.train")
    assert finer["time"].tolist() == seconds["time"].tolist()  # the same seconds, exactly
    assert (seconds.attrs["time_unit"], finer.attrs["time_unit"]) == ("s", unit)
    assert f"read as {unit}" in caplog.text and "data.time_unit=auto" in caplog.text
    assert "from 2015-05-01 00:01:30 UTC to 2015-05-01 10:01:40 UTC" in caplog.text  # the dates, to check by eye
    assert "set data.time_unit=s" in caplog.text
    # Session 2's ten hours are not "more than a day" (86,400 s) as 36,000,000 ms would be: no reuse warning.
    assert "span more than" not in caplog.text


def test_time_unit_by_the_median_size():
    assert time_unit_of(np.array([0.0, 5.0, 1e9])) == "s"  # seconds since the log began, or Unix seconds
    assert time_unit_of(np.array([1.43e12, 1.43e12, 7.0])) == "ms"  # one odd row does not decide
    assert time_unit_of(np.array([1.43e15])) == "us" and time_unit_of(np.array([1.43e18])) == "ns"
    assert time_unit_of(np.array([9.9e10])) == "s" and time_unit_of(np.array([1e11])) == "ms"


def test_a_named_time_unit_is_taken_as_given(tmp_path, caplog):
    path = write_events(tmp_path / "x.tsv", ROWS)  # times 10-30
    with caplog.at_level(logging.INFO):
        events = read_events(path, "data.train", time_unit="ms")
    assert events["time"].tolist() == [0.010, 0.011, 0.012, 0.021, 0.022, 0.030]
    assert "read as" not in caplog.text  # named, not guessed: nothing to say
    large = write_events(tmp_path / "large.tsv", [(1, "a", 1.43e12), (1, "b", 1.43e12 + 5)])
    assert read_events(large, "data.train", time_unit="s")["time"].tolist() == [1.43e12, 1.43e12 + 5]
    # Coarser units are never guessed (they look like seconds since some origin), only named.
    assert read_events(path, "data.train", time_unit="min")["time"].tolist() == [600, 660, 720, 1260, 1320, 1800]
    assert read_events(path, "data.train", time_unit="h")["time"].tolist()[:2] == [36_000, 39_600]
    assert read_events(path, "data.train", time_unit="d")["time"].tolist()[-1] == 30 * 86_400


def test_an_unknown_time_unit_is_an_error_naming_the_key(tmp_path):
    path = write_events(tmp_path / "x.tsv", ROWS)
    units = r"\['auto', 's', 'ms', 'us', 'ns', 'min', 'h', 'd'\]"
    with pytest.raises(ValueError, match=r"data\.time_unit must be one of " + units + ".*'sec'"):
        read_events(path, "data.train", time_unit="sec")
    with pytest.raises(ValueError, match=r"^time_unit must be one of"):
        read_events(path, "input", time_unit="hours", unit_key="time_unit")
    with pytest.raises(ValueError, match=r"data\.time_unit must be one of"):
        FileDataModule(train=str(path), test=str(path), time_unit="minutes")


def test_timestamp_columns_keep_their_own_unit_whatever_time_unit_says(tmp_path):
    frame = pd.DataFrame(
        {"SessionId": [1, 1], "ItemId": [5, 6], "Time": pd.to_datetime(["2015-05-01 00:00:00", "2015-05-01 00:00:10"])}
    )
    frame.to_parquet(tmp_path / "x.parquet")
    for unit in ("auto", "ms"):
        events = read_events(tmp_path / "x.parquet", "data.train", time_unit=unit)
        assert events["time"].tolist() == [1430438400.0, 1430438410.0] and events.attrs["time_unit"] is None


def test_files_in_milliseconds_train_as_the_same_files_in_seconds(tmp_path, caplog):
    rows = [(s, 1 + (s + i) % 7, 1430438490 + 3600 * s + 60 * i) for s in range(1, 40) for i in range(4)]
    seconds = write_events(tmp_path / "s.parquet", rows)
    ms = write_events(tmp_path / "ms.parquet", [(s, i, t * 1000) for s, i, t in rows])
    plain = FileDataModule(train=str(seconds), test=str(seconds), batch_size=8)
    plain.setup("fit")
    finer = FileDataModule(train=str(ms), test=str(seconds), batch_size=8)
    with caplog.at_level(logging.INFO):
        finer.setup("fit")
    for name in ("train_sessions", "valid_sessions", "test_sessions"):
        assert getattr(finer, name).times.tolist() == getattr(plain, name).times.tolist()
    # The prior's window in hours: the same clicks in the last 8 hours.
    counts = [recent_item_counts([m.train_sessions], m.n_items, 8 * 3600.0)[0].tolist() for m in (plain, finer)]
    assert counts[0] == counts[1] and sum(counts[0]) > 0
    assert "different units (data.train in ms, data.test in s)" in caplog.text


def test_times_that_read_as_the_future_are_warned_about(tmp_path, caplog):
    # Date-time numbers (YYYYMMDDhhmmss) are no Unix time: auto reads them as ms, the year 2608, and says so.
    compact = write_events(tmp_path / "compact.tsv", [(1, "a", 20150501103000), (1, "b", 20150501103500)])
    with caplog.at_level(logging.INFO):
        read_events(compact, "data.train")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "in the future" in r.getMessage()]
    assert len(warned) == 1 and "latest click at 2608-07-18" in warned[0].getMessage()
    assert "set data.time_unit to the times' unit" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO):  # Unix milliseconds of 2015 are no such case
        read_events(write_events(tmp_path / "ms.tsv", [(1, "a", 1430438490000), (1, "b", 1430438590000)]), "data.train")
    assert "in the future" not in caplog.text
