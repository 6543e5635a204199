"""Sweep reports: every job's overrides and final metrics in one table, with plots and learning curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lstm_rec.jobs.report import frame_to_markdown

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job directory under `sweep_dir` with a metrics.json (see collect_runs)."""
    return collect_runs(sorted(p.parent for p in Path(sweep_dir).glob("*/metrics.json")))


def collect_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per run directory: job (its name), dir, overrides, each override's value in a column named
    by its key, then the run's metrics.json."""
    rows = []
    for run_dir in map(Path, run_dirs):
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = (yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None) or []
        row: dict[str, Any] = {"job": run_dir.name, "dir": str(run_dir), "overrides": " ".join(overrides)}
        row |= {key.lstrip("+~"): value for key, _, value in (o.partition("=") for o in overrides)}
        row |= json.loads((run_dir / "metrics.json").read_text())
        rows.append(row)
    return pd.DataFrame(rows)


def swept_parameters(jobs: pd.DataFrame) -> list[str]:
    """Override keys whose values differ between jobs."""
    keys = {k for overrides in jobs["overrides"] for k, _, _ in (o.partition("=") for o in overrides.split())}
    keys = [k.lstrip("+~") for k in keys]
    return sorted(k for k in keys if k in jobs and not k.startswith("hydra.") and jobs[k].nunique() > 1)


def sweep_objective(sweep_dir: Path) -> str | None:
    """The metric the sweep optimised: `monitor` in the sweep's multirun.yaml, else in a job's config."""
    for config in [sweep_dir / "multirun.yaml", *sorted(sweep_dir.glob("*/.hydra/config.yaml"))]:
        if config.is_file():
            return yaml.safe_load(config.read_text()).get("monitor")
    return None


def summarize_sweep(sweep_dir: str | Path, sort_by: str | None = None, best_curves: int = 5) -> pd.DataFrame:
    """Write summary.md/.csv (best job first by `sort_by`, default the sweep's monitor), one PNG of the
    objective against each swept parameter, and learning_curves.png of the best jobs, into `sweep_dir`."""
    from lstm_rec.jobs.plots import learning_curves, objective_plots  # matplotlib only when reporting

    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if jobs.empty:
        log.warning("no job of %s wrote metrics.json; no summary written", sweep_dir)
        return jobs
    sort_by = sort_by or sweep_objective(sweep_dir)
    if sort_by in jobs.columns:
        jobs = jobs.sort_values(sort_by, ascending=False, kind="stable", ignore_index=True)
    jobs.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(frame_to_markdown(jobs[summary_columns(jobs.columns)]) + "\n")
    if sort_by in jobs.columns:
        params = swept_parameters(jobs)
        objective_plots(jobs, params, sort_by, sweep_dir)
        learning_curves(sweep_dir, jobs, params, sort_by, sweep_dir / "learning_curves.png", best_curves)
    log.info("sweep summary of %d jobs: %s", len(jobs), sweep_dir / "summary.md")
    return jobs


def summary_columns(columns: pd.Index) -> list[str]:
    """The markdown's columns: Recall@k and MRR@k for val and test, popularity's at the largest k, epochs, time."""
    ks = sorted({int(c.split("@")[1]) for c in columns if c.startswith("test/recall@")})
    wanted = [f"{split}/{name}@{k}" for split in ("val", "test") for k in ks for name in ("recall", "mrr")]
    if ks:
        wanted += [f"pop/test/recall@{ks[-1]}", f"pop/test/mrr@{ks[-1]}"]
    return ["job", "overrides"] + [c for c in [*wanted, "epochs", "wall_seconds"] if c in columns]


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, write the sweep report into the sweep directory."""

    def __init__(self, sort_by: str | None = None) -> None:
        self.sort_by = sort_by

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize_sweep(config.hydra.sweep.dir, self.sort_by)
