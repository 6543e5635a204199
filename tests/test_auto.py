"""trainer.max_epochs=auto: epochs derived from the training data's size, clipped, logged."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from lstm_rec.jobs.auto import auto_epochs, resolve_epochs


@pytest.mark.parametrize(
    ("n_targets", "expected"),
    [
        (2_500_000 // 5, 5),  # 500,000 predictions an epoch: five epochs make the 2,500,000
        (2_500_000 // 7 + 1, 7),  # 357,143: 6.99999 rounds to 7
        (10_000_000, 3),  # a large log: the lower bound
        (1_000, 14),  # a small one: the upper bound
        (507_281 - 10_001, 5),  # retailrocket-sessions' train_full less ~10,000 validation predictions: 5.03
        (52_484 * 9 // 10, 14),  # yoochoose-100k's less the validation tenth: 52.9, clipped
    ],
)
def test_auto_epochs_train_about_the_target_number_of_predictions(n_targets, expected):
    assert auto_epochs(n_targets, targets=2_500_000, low=3, high=14) == expected


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
