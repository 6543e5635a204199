"""Sweeps as users run them: an Optuna search stored in SQLite and resumed, a parallel grid, and the report."""

import csv
import json

import pytest
import yaml

from conftest import TINY, run_script

pytestmark = pytest.mark.slow

# Small data and one epoch; the searched parameters are left to the sweeper. No prior or kNN blend chosen after
# training (their own tests: test_prior_auto.py, test_blend.py): they took a third of each job's time here.
QUICK = [o for o in TINY if o.startswith(("data.n_", "callbacks.", "trainer."))] + ["trainer.max_epochs=1"]
QUICK += ["~prior", "~blend"]
# The command line narrows the preset's space (the sweeper merges it in): small networks train in a moment.
SMALL_SPACE = ["model.hidden=choice(16,32)", "model.embedding_dim=choice(16,32)", "model.num_layers=choice(1)"]


def test_optuna_search_in_sqlite_resumes_and_reports(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}", *QUICK]
    search += SMALL_SPACE
    run_script("scripts/train.py", *search, f"hydra.sweep.dir={tmp_path / 'first'}")
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
    run_script("scripts/train.py", *search[:1], "hydra.sweeper.n_trials=1", *search[2:], "hydra.sweeper.sampler.seed=7",
        f"hydra.sweep.dir={tmp_path / 'more'}")  # fmt: skip
    import optuna

    assert len(optuna.load_study(study_name="lstm_rec", storage=storage).trials) == 3

    # summarize.py rebuilds the report of a sweep directory
    for name in ("summary.md", "summary.csv", "learning_curves.png"):
        (tmp_path / "first" / name).unlink()
    printed = run_script("scripts/summarize.py", str(tmp_path / "first")).stdout
    assert printed.count("model.hidden=") == 2
    for name in ("summary.md", "summary.csv", "learning_curves.png", "objective_vs_model.optimizer.lr.png"):
        assert (tmp_path / "first" / name).is_file(), name


def test_a_grid_in_parallel_processes_gives_one_directory_per_job_and_a_summary(tmp_path):
    sweep = tmp_path / "grid"
    run_script("scripts/train.py", "-m", "hydra/launcher=parallel", "num_threads=1", *QUICK, "model.hidden=16,32",
               "model.embedding_dim=16", f"hydra.sweep.dir={sweep}")  # fmt: skip
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert any((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["model.hidden"] for row in rows) == ["16", "32"]
    scores = [float(row["val/mrr@20"]) for row in rows]
    assert scores == sorted(scores, reverse=True)  # best job first
    for row in rows:
        job_metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["test/recall@20"]) == pytest.approx(job_metrics["test/recall@20"])
    summary = (sweep / "summary.md").read_text()
    assert summary.count("model.hidden=") == 2 and "val/mrr@20" in summary
    assert (sweep / "objective_vs_model.hidden.png").is_file()


def test_the_optuna_sweeper_searches_the_keys_of_tune_yaml():
    from omegaconf import OmegaConf

    from lstm_rec.jobs.config import CONF_DIR

    sweeper = OmegaConf.load(CONF_DIR / "hparams_search" / "optuna.yaml").hydra.sweeper.params
    assert set(sweeper) == set(OmegaConf.load(CONF_DIR / "tune.yaml").search)
