"""trainer.max_epochs=auto within auto_epochs.minutes: fewer epochs on a machine too slow for them."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from conftest import compose_config
from lstm_rec.callbacks import EpochBudget, epochs_within
from lstm_rec.jobs.auto import epoch_budget
from lstm_rec.jobs.train import train

# 3,000 synthetic sessions: 14 epochs by auto_epochs.targets, 6 batches of 32 session-parallel steps an epoch.
RECIPE = ["data.n_sessions=3000", "data.n_items=200", "model.hidden=16", "model.embedding_dim=16", "~prior", "~blend",
          "refit=false", "callbacks.early_stopping=null", "callbacks.progress_bar=null",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
# A budget no machine meets: the fewest epochs allowed.
TINY_BUDGET = ["auto_epochs.minutes=0.000001", "auto_epochs.low=2"]


@pytest.mark.parametrize(
    ("minutes", "step_seconds", "steps", "epochs", "low", "expected"),
    [
        (8, 0.018, 6216, 6, 3, 4),  # an epoch of 111.9 s: 480 / 111.9 = 4.29 epochs fit
        (8, 0.012, 6216, 6, 3, 6),  # 74.6 s: 6.4 fit, the 6 asked for stay
        (8, 0.030, 6216, 6, 3, 3),  # 186.5 s: 2.6 fit, but never fewer than low
        (8, 0.030, 6216, 2, 3, 2),  # and never more than asked for
        (1, 0.010, 3000, 14, 1, 2),  # 30 s an epoch: exactly 2 fit
        (8, 0.0, 6216, 6, 3, 6),  # no time measured: as asked
    ],
)
def test_the_epochs_that_fit_the_budget(minutes, step_seconds, steps, epochs, low, expected):
    assert epochs_within(minutes, step_seconds, steps, epochs, low) == expected


class FakeTrainer:
    """What EpochBudget.recheck reads of a trainer: the epoch, the epochs (Lightning's fit loop holds them)."""

    def __init__(self, epoch: int, max_epochs: int) -> None:
        self.current_epoch, self.fit_loop, self.lr_scheduler_configs = epoch, SimpleNamespace(max_epochs=max_epochs), []
        self.strategy = SimpleNamespace(broadcast=lambda value, src: value)

    @property
    def max_epochs(self) -> int:
        return self.fit_loop.max_epochs


@pytest.mark.parametrize(
    ("minutes", "spent", "done", "epochs", "expected"),
    [
        (10, 200.0, 1, 6, 3),  # 200 s an epoch: 2 more fit in the 400 s left
        (10, 100.0, 1, 6, 6),  # 100 s an epoch: all 6 fit
        (10, 250.0, 2, 6, 4),  # 125 s an epoch: 2 more in the 350 s left
        (10, 700.0, 1, 6, 3),  # over already: never fewer than low
        (10, 700.0, 4, 6, 4),  # nor than the epochs done
    ],
)
def test_after_each_epoch_the_epochs_left_are_checked_against_the_time_left(minutes, spent, done, epochs, expected):
    budget = EpochBudget(minutes, low=3)
    budget.spent = spent
    trainer = FakeTrainer(done - 1, epochs)
    budget.recheck(trainer, SimpleNamespace(total_steps=lambda: 0))
    assert trainer.fit_loop.max_epochs == expected
    assert budget.chosen == (expected if expected < epochs else None)


@pytest.mark.parametrize("minutes", [0, -1, math.nan])
def test_a_budget_of_no_time_is_refused_by_name(minutes):
    with pytest.raises(ValueError, match=r"auto_epochs.minutes must be a number of minutes > 0 \(or null"):
        EpochBudget(minutes, low=3)


def test_the_budget_watches_only_an_auto_count_with_minutes(tmp_path):
    def budget(*overrides):
        return epoch_budget(compose_config("train", list(overrides), tmp_path))

    (callback,) = budget()
    assert isinstance(callback, EpochBudget) and (callback.minutes, callback.low) == (7.5, 3)
    assert budget("trainer.max_epochs=6") == []  # a count the user gave is kept
    assert budget("auto_epochs.minutes=null") == []
    # tune.py's trials and final run, and the sweeps' trials, train the epochs they are given, whatever the machine
    assert epoch_budget(compose_config("tune", [], tmp_path)) == []
    assert budget("hparams_search=grid") == [] and budget("hparams_search=optuna") == []


def weights(checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(("steps_per_batch", "timed"), [(32, "steps 33-160"), (1, "steps 2-5")])
def test_a_run_over_budget_trains_fewer_epochs_exactly_as_that_count_would(steps_per_batch, timed, tmp_path, caplog):
    recipe = [*RECIPE, f"data.steps_per_batch={steps_per_batch}"]
    with caplog.at_level(logging.INFO, logger="lstm_rec.callbacks"):
        cut = train(compose_config("train", [*recipe, *TINY_BUDGET], tmp_path / "cut"))
    assert "trainer.max_epochs=auto: 2 epochs instead of 14" in caplog.text
    assert f"({timed})" in caplog.text  # batches 2-5, within the schedule's 200 warm-up steps
    assert (cut["epochs"], cut["max_epochs"]) == (2, 2)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["max_epochs"] == 2
    # The choice fell within the warm-up, so the run is the one trainer.max_epochs=2 trains, to the bit.
    fixed = train(compose_config("train", [*recipe, "trainer.max_epochs=2"], tmp_path / "fixed"))
    cut_weights, fixed_weights = weights(cut["checkpoint"]), weights(fixed["checkpoint"])
    assert cut_weights.keys() == fixed_weights.keys()
    assert all(torch.equal(cut_weights[name], fixed_weights[name]) for name in cut_weights)
    assert cut["test/mrr@20"] == fixed["test/mrr@20"]


class StopAtSecondEpoch(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped for the test")


@pytest.mark.slow
def test_a_resumed_run_keeps_the_epochs_its_budget_chose(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped for the test"):
        train(compose_config("train", [*RECIPE, *TINY_BUDGET], out), callbacks=[StopAtSecondEpoch()])
    # ckpt_path=last again: without the budget's choice in the checkpoint, it would train 14 epochs.
    resumed = train(compose_config("train", [*RECIPE, *TINY_BUDGET, "ckpt_path=last"], out))
    assert (resumed["epochs"], resumed["max_epochs"]) == (2, 2)
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=False)["epoch"] == 1


@pytest.mark.slow
def test_an_epoch_too_short_to_time_its_batches_is_timed_whole(tmp_path, caplog):
    few = [*RECIPE, "data.n_sessions=600", *TINY_BUDGET]  # 1-2 batches an epoch
    with caplog.at_level(logging.INFO, logger="lstm_rec.callbacks"):
        metrics = train(compose_config("train", few, tmp_path / "run"))
    assert "epochs instead of 14" in caplog.text and "(the first epoch)" in caplog.text
    assert (metrics["epochs"], metrics["max_epochs"]) == (2, 2)
