"""The benchmark job reports speed, memory and time-to-accuracy from a real (small) run."""

import json

import pytest

from conftest import TINY, compose_config
from lstm_rec.jobs.benchmark import benchmark, time_to_target


def test_benchmark_reports_its_numbers(tmp_path):
    overrides = [o for o in TINY if not o.startswith(("callbacks.", "trainer.enable_progress_bar"))]
    results = benchmark(compose_config("benchmark", [*overrides, "target=0.05"], tmp_path))
    assert results["epochs"] == 3 == len(results["epoch_seconds"]) == len(results["val_curve"])
    assert results["train_targets_per_epoch"] > 0 and results["train_events_per_second"] > 0
    assert results["eval_predictions"] == results["test"]["test/n_predictions"] > 0
    assert results["eval_predictions_per_second"] > 0 and results["peak_rss_gib"] > 0
    # a target this low is met after the first epoch: its time is that epoch's training time (2 vs 3 decimals)
    assert results["val_curve"][0] >= 0.05
    assert results["seconds_to_val/mrr@20>=0.05"] == pytest.approx(results["epoch_seconds"][0], abs=0.006)
    assert json.loads((tmp_path / "benchmark.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("batching", ["parallel", "windows"])
def test_training_speed_counts_every_target_once_an_epoch(tmp_path, batching):
    # Session-parallel steps (the default, data.batching=auto) are ParallelStep tuples, windows padded tensors.
    overrides = [o for o in TINY if not o.startswith(("callbacks.", "trainer.enable_progress_bar", "data.batching"))]
    cfg = compose_config("benchmark", [*overrides, f"data.batching={batching}", "trainer.max_epochs=2"], tmp_path)
    results = benchmark(cfg)
    targets, seconds = results["train_targets_per_epoch"], results["epoch_seconds"][1]  # the steady (second) epoch
    # seconds are rounded to 3 decimals, the speed to a whole number
    assert targets / (seconds + 0.0005) - 1 <= results["train_events_per_second"] <= targets / (seconds - 0.0005) + 1


def testtime_to_target_waits_for_every_metric():
    epochs = [
        {"train_seconds": 1.0, "val/recall@20": 0.56, "val/mrr@20": 0.20},
        {"train_seconds": 2.0, "val/recall@20": 0.60, "val/mrr@20": 0.30},
        {"train_seconds": 1.5, "val/recall@20": 0.55, "val/mrr@20": 0.35},
    ]
    # recall is reached after epoch 1 but MRR only after epoch 2: 1.0 + 2.0 seconds
    assert time_to_target(epochs, {"val/recall@20": 0.55, "val/mrr@20": 0.30}) == 3.0
    assert time_to_target(epochs, {"val/mrr@20": 0.35}) == 4.5
    assert time_to_target(epochs, {"val/recall@20": 0.55, "val/mrr@20": 0.36}) is None


def test_benchmark_target_can_name_several_metrics(tmp_path):
    overrides = [o for o in TINY if not o.startswith(("callbacks.", "trainer.enable_progress_bar"))]
    target = "target={val/recall@20: 0.05, val/mrr@20: 1.01}"  # an MRR above 1 is never reached
    results = benchmark(compose_config("benchmark", [*overrides, target], tmp_path))
    assert results["seconds_to_val/recall@20>=0.05,val/mrr@20>=1.01"] is None
    curves = results["val_curves"]
    assert list(curves) == ["val/mrr@20", "val/recall@20"] and curves["val/mrr@20"] == results["val_curve"]
    assert len(curves["val/recall@20"]) == 3 and min(curves["val/recall@20"]) > 0
    with pytest.raises(ValueError, match="target must be a number or a mapping"):
        benchmark(compose_config("benchmark", [*overrides, "target=high"], tmp_path))
