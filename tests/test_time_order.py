"""data.order=time: training batches of consecutive sessions by the time of their first click."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_events
from lstm_rec.data import FileDataModule
from lstm_rec.data.batching import LengthGroupedBatchSampler, SessionBatches
from lstm_rec.data.sessions import Sessions


def test_time_order_cuts_the_windows_by_time_into_consecutive_batches_the_same_every_epoch():
    times = np.array([50.0, 10.0, 30.0, 30.0, 20.0, 40.0, 0.0])
    sampler = LengthGroupedBatchSampler(np.arange(1, 8), batch_size=3, shuffle=True, order="time", times=times)
    first = [batch.tolist() for batch in sampler]
    assert first == [[6, 1, 4], [2, 3, 5], [0]]  # whatever the lengths; ties keep their order
    sampler.set_epoch(1)
    assert [batch.tolist() for batch in sampler] == first
    assert len(sampler) == 3


def test_a_long_sessions_windows_stay_in_order_and_take_their_sessions_time():
    # Session 0 (7 clicks, starting at t=100) cut into windows of 2 targets; session 1 (3 clicks) starts at t=50.
    items = np.arange(1, 11)
    times = np.array([100.0, 101, 102, 103, 104, 105, 106, 50, 51, 52])
    dataset = SessionBatches(Sessions(items, np.array([0, 7, 10]), times), max_len=2)
    assert dataset.times.tolist() == [100.0, 102.0, 104.0, 50.0]
    sampler = LengthGroupedBatchSampler(dataset.lengths, 2, True, order="time", times=dataset.times)
    assert [batch.tolist() for batch in sampler] == [[3, 0], [1, 2]]


def test_the_order_is_checked():
    with pytest.raises(ValueError, match=r"data.order must be one of \['shuffle', 'time'\], got 'random'"):
        LengthGroupedBatchSampler(np.ones(4), 2, True, order="random")
    with pytest.raises(ValueError, match=r"data\.order=time needs click times"):
        LengthGroupedBatchSampler(np.ones(4), 2, True, order="time")
    with pytest.raises(ValueError, match=r"data\.order must be one of"):
        FileDataModule(order="newest")


def test_the_datamodule_orders_training_by_time_and_evaluates_as_before(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for session in range(200):  # session ids against time: the latest session has the smallest id
        start = 1_000.0 * (200 - session)
        rows += [(session, int(item), start + 10 * k) for k, item in enumerate(rng.integers(1, 30, 4))]
    train, test = write_events(tmp_path / "train.tsv", rows), write_events(tmp_path / "test.tsv", rows)
    timed = FileDataModule(train=str(train), test=str(test), batch_size=16, valid_fraction=0.1, order="time")
    timed.setup("fit")
    starts = timed.train_sessions.times[timed.train_sessions.offsets[:-1]]
    seen = np.concatenate([starts[batch] for batch in timed.train_dataloader().sampler])
    assert (np.diff(seen) >= 0).all() and len(seen) == timed.train_sessions.n_sessions
    plain = FileDataModule(train=str(train), test=str(test), batch_size=16, valid_fraction=0.1)
    plain.setup("fit")
    assert [b.tolist() for b in timed.val_dataloader().sampler] == [b.tolist() for b in plain.val_dataloader().sampler]
