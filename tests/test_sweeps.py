"""Sweeps as users run them: an Optuna search stored in SQLite and resumed, a parallel grid, and the report."""

import csv
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TINY

pytestmark = pytest.mark.slow

# Small data and one epoch; the searched parameters are left to the sweeper.
QUICK = [o for o in TINY if o.startswith(("data.n_", "callbacks.", "trainer."))] + ["trainer.max_epochs=1"]


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_optuna_search_in_sqlite_resumes_and_reports(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}", *QUICK]
    run("scripts/train.py", *search, f"hydra.sweep.dir={tmp_path / 'first'}")
    results = yaml.safe_load((tmp_path / "first" / "optimization_results.yaml").read_text())
    with open(tmp_path / "first" / "summary.csv") as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 2
    # train returns the objective: the sweeper's best value is the best job's val/mrr@20
    assert results["best_value"] == pytest.approx(max(float(j["val/mrr@20"]) for j in jobs))
    assert float(jobs[0]["val/mrr@20"]) >= float(jobs[1]["val/mrr@20"])
    swept = {"model.hidden", "model.dropout", "model.optimizer.lr", "data.batch_size"}
    assert swept <= set(jobs[0]) and (tmp_path / "first" / "learning_curves.png").is_file()

    # the same study continues from its two trials
    run("scripts/train.py", *search[:1], "hydra.sweeper.n_trials=1", *search[2:], "hydra.sweeper.sampler.seed=7",
        f"hydra.sweep.dir={tmp_path / 'more'}")  # fmt: skip
    import optuna

    assert len(optuna.load_study(study_name="lstm_rec", storage=storage).trials) == 3

    # summarize.py rebuilds the report of a sweep directory
    for name in ("summary.md", "summary.csv", "learning_curves.png"):
        (tmp_path / "first" / name).unlink()
    printed = run("scripts/summarize.py", str(tmp_path / "first")).stdout
    assert printed.count("model.hidden=") == 2
    for name in ("summary.md", "summary.csv", "learning_curves.png", "objective_vs_model.optimizer.lr.png"):
        assert (tmp_path / "first" / name).is_file(), name


def test_grid_in_parallel_processes(tmp_path):
    sweep = tmp_path / "grid"
    run("scripts/train.py", "-m", "hydra/launcher=parallel", "num_threads=1", *QUICK, "model.hidden=16,32",
        f"hydra.sweep.dir={sweep}")  # fmt: skip
    with open(sweep / "summary.csv") as f:
        assert sorted(row["model.hidden"] for row in csv.DictReader(f)) == ["16", "32"]
    assert (sweep / "objective_vs_model.hidden.png").is_file()
