"""The scripts as users run them: a single run into hydra.run.dir, then the evaluation of its checkpoint."""

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
    for run in (run_dir, eval_dir):  # the packages and machine behind each run's figures
        assert json.loads((run / "environment.json").read_text())["packages"]["lstm_rec"] is not None
    assert evaluated["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"])
    assert "| lstm |" in result.stdout
