"""The benchmark job reports speed, memory and time-to-accuracy from a real (small) run."""

import json

import pytest

from conftest import TINY, compose_config
from lstm_rec.benchmark import benchmark


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
