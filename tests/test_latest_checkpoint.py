"""last.ckpt holds the latest epoch even when the monitored metric stopped improving (LatestCheckpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.callbacks import LatestCheckpoint, PlateauEarlyStopping
from lstm_rec.jobs.train import train


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def test_last_checkpoint_is_the_latest_epoch_and_is_what_test_ckpt_last_tests(train_config):
    # mode=min on val/mrr@20 keeps the first epoch as "best" while the later, better epochs are not: Lightning's own
    # ModelCheckpoint then leaves last.ckpt at epoch 0.
    cfg = train_config(
        "callbacks.model_checkpoint.mode=min", "callbacks.early_stopping=null", "test_ckpt=last", "logger=csv"
    )
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert _epoch_of(checkpoints / "epoch_000.ckpt") == 0
    assert _epoch_of(checkpoints / "last.ckpt") == cfg.trainer.max_epochs - 1 == 2
    assert metrics["checkpoint"] == str(checkpoints / "last.ckpt")
    final_val = metrics["val/mrr@20"]  # metrics.json's val/ metrics are the tested checkpoint's
    best_val = torch.load(checkpoints / "epoch_000.ckpt", map_location="cpu", weights_only=True)
    monitored = next(v for k, v in best_val["callbacks"].items() if "LatestCheckpoint" in k)["best_model_score"]
    assert final_val > float(monitored)  # training went on improving after the epoch kept as "best"
    # ckpt_path=last resumes from here: after epoch 2, not from the first epoch.


class _Strategy:
    @staticmethod
    def reduce_boolean_decision(decision: bool) -> bool:
        return decision


class _Trainer:
    strategy = _Strategy()


def _kept(callback: LatestCheckpoint, values: list[float]) -> list[bool]:
    return [callback.check_monitor_top_k(_Trainer(), torch.tensor(value)) for value in values]


def test_tolerance_keeps_the_latest_epoch_within_its_share_of_the_best(tmp_path):
    # Best so far 0.33 after epoch 2: 0.329 lies within 1 % (>= 0.3267), 0.325 does not; then 0.334 is a new best
    # and 0.330 falls short of 0.334 - 0.00334.
    callback = LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", mode="max", tolerance=0.01)
    assert _kept(callback, [0.30, 0.33, 0.329, 0.325, 0.334, 0.330]) == [True, True, True, False, True, False]
    assert callback.best_seen == pytest.approx(0.334)
    # A loss (mode=min): within 1 % above the lowest so far.
    callback = LatestCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", tolerance=0.01)
    assert _kept(callback, [0.5, 0.45, 0.452, 0.46]) == [True, True, True, False]
    # A NaN is kept only when nothing better was seen (as Lightning keeps it, scored as the worst value).
    callback = LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", mode="max", tolerance=0.01)
    assert _kept(callback, [float("nan"), 0.2, float("nan")]) == [True, True, False]


def test_tolerance_travels_in_the_callback_state_and_is_checked(tmp_path):
    callback = LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", mode="max", tolerance=0.01)
    _kept(callback, [0.3, 0.4])
    resumed = LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", mode="max", tolerance=0.01)
    resumed.load_state_dict(callback.state_dict())
    assert _kept(resumed, [0.397, 0.39]) == [True, False]  # against 0.4 - 0.004, the best before the resume
    with pytest.raises(ValueError, match="tolerance must be a share >= 0"):
        LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", tolerance=-0.1)
    with pytest.raises(ValueError, match="needs save_top_k=1, got 2"):
        LatestCheckpoint(dirpath=tmp_path, monitor="val/mrr@20", save_top_k=2, tolerance=0.01)
    LatestCheckpoint(dirpath=tmp_path, tolerance=0.01)  # no monitor (a refit, a top-up): nothing to compare


def test_a_run_tests_the_latest_epoch_within_the_tolerance(tmp_path):
    # Tolerance 1 keeps every epoch whose value is at least 0 (= best - |best|): the latest, whatever the curve;
    # tolerance 0 keeps the best epoch of the run's own curve (the first of equals).
    for tolerance in (1.0, 0.0):
        overrides = [*TINY, f"monitor_tolerance={tolerance}", "callbacks.early_stopping=null"]
        cfg = compose_config("train", overrides, tmp_path / f"run{tolerance}")
        metrics = train(cfg)
        last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
        epochs = next(v for k, v in last["callbacks"].items() if "TrainingCurves" in k)["epochs"]
        mrr = {epoch - 1: values["val/mrr@20"] for epoch, values in epochs.items()}
        expected = max(mrr) if tolerance else max(mrr, key=lambda epoch: (mrr[epoch], -epoch))
        assert _epoch_of(Path(metrics["checkpoint"])) == expected, (tolerance, mrr)


def _stops(callback: PlateauEarlyStopping, values: list[float]) -> list[bool]:
    return [callback._evaluate_stopping_criteria(torch.tensor(value))[0] for value in values]


def test_early_stopping_patience_restarts_within_the_tolerance():
    # Best 0.33: 0.329 is within 1 % and restarts the patience, 0.32 is not; two epochs below in a row stop.
    values = [0.30, 0.33, 0.329, 0.32, 0.329, 0.31, 0.31]
    plateau = PlateauEarlyStopping(monitor="val/mrr@20", mode="max", patience=2, tolerance=0.01)
    assert _stops(plateau, values) == [False] * 6 + [True]
    assert float(plateau.best_score) == pytest.approx(0.33)  # the best stays the best
    lightning = PlateauEarlyStopping(monitor="val/mrr@20", mode="max", patience=2)  # tolerance 0: Lightning's rule
    assert _stops(lightning, values[:4]) == [False, False, False, True]
    loss = PlateauEarlyStopping(monitor="val/loss", mode="min", patience=1, tolerance=0.01)
    assert _stops(loss, [0.5, 0.45, 0.454, 0.46]) == [False, False, False, True]
    with pytest.raises(ValueError, match="tolerance must be a share >= 0"):
        PlateauEarlyStopping(monitor="val/mrr@20", tolerance=-1.0)
