"""Settings derived from the data (epochs, batch size, cell, refit): chosen, clipped, logged; bad values named."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from lstm_rec.jobs.auto import (
    auto_batch_size,
    auto_epochs,
    resolve_batch_size,
    resolve_cell,
    resolve_epochs,
    resolve_refit,
)


@pytest.mark.parametrize(
    ("n_targets", "expected"),
    [
        (3_000_000 // 5, 5),  # 600,000 predictions an epoch: five epochs make the 3,000,000
        (3_000_000 // 7 + 1, 7),  # 428,572: 6.99999 rounds to 7
        (10_000_000, 3),  # a large log: the lower bound
        (1_000, 14),  # a small one: the upper bound
        (507_281 - 10_001, 6),  # retailrocket-sessions' train_full less ~10,000 validation predictions: 6.03
        (52_484 * 9 // 10, 14),  # yoochoose-100k's less the validation tenth: 63.5, clipped
    ],
)
def test_auto_epochs_train_about_the_target_number_of_predictions(n_targets, expected):
    assert auto_epochs(n_targets, targets=3_000_000, low=3, high=14) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 100, 1, 2), "no next-item predictions"), ((10, 100, 3, 2), "low <= high"), ((10, 100, 0, 2), "low")],
)
def test_auto_epochs_refuses_impossible_settings(args, message):
    with pytest.raises(ValueError, match=message):
        auto_epochs(*args)


def config(max_epochs):
    return OmegaConf.create(
        {"trainer": {"max_epochs": max_epochs}, "auto_epochs": {"targets": 1000, "low": 2, "high": 9}}
    )


def test_resolve_epochs_writes_the_choice_into_the_config_and_logs_why(caplog):
    cfg = config("auto")
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        resolve_epochs(cfg, n_targets=250)
    assert cfg.trainer.max_epochs == 4
    assert "4 epochs (250 training predictions an epoch, about 1,000 in all)" in caplog.text
    cfg = config("auto")
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        resolve_epochs(cfg, n_targets=10)
    assert cfg.trainer.max_epochs == 9
    assert "the upper bound of auto_epochs" in caplog.text


@pytest.mark.parametrize("given", [5, -1])
def test_a_number_of_epochs_is_left_as_given(given):
    cfg = config(given)
    resolve_epochs(cfg, n_targets=10)
    assert cfg.trainer.max_epochs == given


@pytest.mark.parametrize("given", ["many", 0, 2.5, True])
def test_a_bad_max_epochs_names_the_key_and_what_it_may_be(given):
    with pytest.raises(ValueError, match=r"trainer.max_epochs must be a positive integer, -1 \(no limit\) or auto"):
        resolve_epochs(config(given), n_targets=10)


class Data:
    """What resolve_batch_size reads of a datamodule."""

    def __init__(self, batch_size, n_targets):
        self.batch_size = batch_size
        self.train_sessions = type("Sessions", (), {"n_targets": n_targets})()


def batch_config(batch_size):
    settings = {"small": 80, "large": 128, "large_from": 150_000}
    return OmegaConf.create({"data": {"batch_size": batch_size}, "auto_batch_size": settings})


@pytest.mark.parametrize(
    ("n_targets", "expected", "why"),
    [
        (47_235, 80, "fewer than 150,000: small steps score best"),  # yoochoose-100k's train_full less 10 %
        (149_999, 80, "fewer than 150,000"),
        (150_000, 128, "at least 150,000: wider steps keep a very large log's run affordable"),
        (497_279, 128, "at least 150,000"),
    ],
)
def test_auto_batch_size_widens_the_steps_of_a_large_log(caplog, n_targets, expected, why):
    cfg, data = batch_config("auto"), Data("auto", n_targets)
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        resolve_batch_size(cfg, data)
    assert data.batch_size == cfg.data.batch_size == expected
    assert f"data.batch_size=auto: {expected} ({n_targets:,} training predictions an epoch, {why}" in caplog.text


def test_a_given_batch_size_stays_and_a_bad_one_is_an_error():
    cfg, data = batch_config(64), Data(64, 1_000_000)
    resolve_batch_size(cfg, data)
    assert data.batch_size == cfg.data.batch_size == 64
    for bad in ("wide", 0, 2.5, True):
        with pytest.raises(ValueError, match=r"data\.batch_size must be a positive integer or auto"):
            resolve_batch_size(batch_config(bad), Data(bad, 10))
    with pytest.raises(ValueError, match="1 <= small <= large"):
        auto_batch_size(10, small=128, large=80, large_from=5)


def cell_config(cell, batching="auto"):
    settings = {"small": "lstm", "large": "gru", "large_from": 150_000}
    return OmegaConf.create({"model": {"cell": cell}, "data": {"batching": batching}, "auto_cell": settings})


@pytest.mark.parametrize(
    ("n_targets", "batching", "expected", "why"),
    [
        (47_235, "auto", "lstm", "47,235 training predictions an epoch, fewer than 150,000: a small log"),
        (149_999, "parallel", "lstm", "149,999 training predictions an epoch, fewer than 150,000"),
        (150_000, "auto", "gru", "150,000 training predictions an epoch, at least 150,000: a large log"),
        (497_279, "parallel", "gru", "497,279 training predictions an epoch, at least 150,000"),
        (497_279, "windows", "lstm", "data.batching=windows"),
    ],
)
def test_auto_cell_takes_the_gru_on_a_large_log_of_session_parallel_steps(caplog, n_targets, batching, expected, why):
    cfg = cell_config("auto", batching)
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        resolve_cell(cfg, n_targets)
    assert cfg.model.cell == expected
    assert f"model.cell=auto: {expected} ({why}" in caplog.text


def test_a_given_cell_stays_and_a_bad_one_is_an_error():
    cfg = cell_config("lstm")
    resolve_cell(cfg, 1_000_000)
    assert cfg.model.cell == "lstm"
    with pytest.raises(ValueError, match=r"model\.cell must be one of \['lstm', 'gru', 'auto'\], got 'rnn'"):
        resolve_cell(cell_config("rnn"), 10)
    bad = cell_config("auto")
    bad.auto_cell.large = "transformer"
    with pytest.raises(ValueError, match=r"auto_cell\.large must be one of \['lstm', 'gru'\], got 'transformer'"):
        resolve_cell(bad, 10)


def refit_config(refit, min_share=0.05):
    return OmegaConf.create({"refit": refit, "auto_refit": {"min_share": min_share}})


def split_data(held: int, trained: int, stationary: bool = False):
    """A fitted datamodule's refit facts: `held` validation predictions beside `trained` training ones."""
    share = held / (held + trained)
    return SimpleNamespace(valid_carved=True, valid_sessions=object(), valid_share=share, stationary=stationary)


@pytest.mark.parametrize(
    ("held", "trained", "expected", "why"),
    [
        (5_636, 46_823, True, "withheld 10.7% of data.train's next-item predictions, at least auto_refit.min_share=5%"),
        (5_000, 95_000, True, "withheld 5.0%"),  # exactly the share
        (4_999, 95_001, "top_up", "withheld 5.0% of data.train's next-item predictions, less than"),  # 4.999%
        (10_000, 497_281, "top_up", "withheld 2.0% of data.train's next-item predictions, less than"),
    ],
)
def test_auto_refits_when_the_split_withheld_a_large_share_and_tops_up_below(caplog, held, trained, expected, why):
    cfg = refit_config("auto")
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        assert resolve_refit(cfg, split_data(held, trained)) == expected
    assert cfg.refit == expected  # written into the config the run saves
    assert why in caplog.text
    assert ("refit: top up" in caplog.text) == (expected == "top_up")


def test_refit_needs_validation_split_off_the_training_data_and_one_process(caplog):
    given = SimpleNamespace(valid_carved=False, valid_sessions=object(), valid_share=0.5)
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        assert resolve_refit(refit_config("auto"), given) is False
    assert "refit: no (its validation sessions come from data.valid" in caplog.text
    with pytest.raises(ValueError, match=r"refit=true .* validation sessions come from data\.valid.*refit=false"):
        resolve_refit(refit_config(True), given)
    none = SimpleNamespace(valid_carved=False, valid_sessions=None, valid_share=0.0)
    with pytest.raises(ValueError, match="it has no validation sessions to choose the epochs with"):
        resolve_refit(refit_config(True), none)
    assert resolve_refit(refit_config("auto"), split_data(50, 50), world_size=2) is False
    with pytest.raises(ValueError, match="refit=true runs in one process; this trainer has 2"):
        resolve_refit(refit_config(True), split_data(50, 50), world_size=2)
    with pytest.raises(ValueError, match=r"refit=top_up trains further .* come from data\.valid"):
        resolve_refit(refit_config("top_up"), given)


def test_auto_does_not_refit_the_synthetic_sessions(caplog):
    with caplog.at_level(logging.INFO, logger="lstm_rec.jobs.auto"):
        assert resolve_refit(refit_config("auto"), split_data(50, 50, stationary=True)) is False
    assert "drawn from one unchanging process: its newest hold nothing new" in caplog.text
    assert resolve_refit(refit_config(True), split_data(50, 50, stationary=True)) is True


def test_a_forced_refit_and_bad_refit_settings():
    assert resolve_refit(refit_config(True), split_data(1, 999)) is True  # 0.1%: forced
    assert resolve_refit(refit_config(False), None) is False  # never looks at the data
    assert resolve_refit(refit_config("top_up"), split_data(500, 500)) == "top_up"  # 50%: forced
    with pytest.raises(ValueError, match="refit must be auto, true, top_up or false, got 'always'"):
        resolve_refit(refit_config("always"), split_data(1, 1))
    with pytest.raises(ValueError, match=r"auto_refit\.min_share must be a share in \[0, 1\], got 5\.0"):
        resolve_refit(refit_config("auto", 5), split_data(1, 1))
