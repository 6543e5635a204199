"""The scripts as users run them: a single run into hydra.run.dir, and a multirun sweep with its summary."""

import csv
import json

import pytest

from conftest import TINY, run_script

pytestmark = pytest.mark.slow


def test_train_script_into_run_dir_then_evaluate(tmp_path):
    run_dir = tmp_path / "my run"
    result = run_script("scripts/train.py", *TINY, f"hydra.run.dir={run_dir}")
    assert "| LSTM | test |" in result.stdout and "| popularity | test |" in result.stdout
    assert f"outputs: {run_dir}" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    eval_dir = tmp_path / "eval"
    result = run_script(
        "scripts/evaluate.py", f"ckpt_path={metrics['checkpoint']}", "data.n_sessions=3000", "data.n_items=200",
        f"hydra.run.dir={eval_dir}",
    )  # fmt: skip
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert evaluated["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"])
    assert "| lstm |" in result.stdout


def test_multirun_gives_one_directory_per_job_and_a_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_script(
        "scripts/train.py", "-m", *TINY, "model.hidden=16,32", "trainer.max_epochs=2", f"hydra.sweep.dir={sweep_dir}"
    )
    for job in ("0", "1"):
        assert (sweep_dir / job / "metrics.json").is_file()
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        assert any((sweep_dir / job / "tensorboard").glob("events.out.tfevents.*"))
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["overrides"].split("model.hidden=")[1].split()[0] for r in rows) == ["16", "32"]
    scores = [float(r["val/mrr@20"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # best job first
    for row in rows:
        job_metrics = json.loads((sweep_dir / row["job"] / "metrics.json").read_text())
        assert float(row["test/recall@20"]) == pytest.approx(job_metrics["test/recall@20"])
    summary = (sweep_dir / "summary.md").read_text()
    assert summary.count("model.hidden=") == 2 and "val/mrr@20" in summary
