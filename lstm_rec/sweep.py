"""Summaries of multirun sweeps: every job's final metrics in one table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lstm_rec.report import frame_to_markdown

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job directory under `sweep_dir` that holds a metrics.json: overrides, then metrics."""
    rows = []
    for metrics_file in sorted(Path(sweep_dir).glob("*/metrics.json")):
        job_dir = metrics_file.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row: dict[str, Any] = {"job": job_dir.name, "overrides": " ".join(overrides or [])}
        row |= json.loads(metrics_file.read_text())
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_sweep(sweep_dir: str | Path, sort_by: str | None = None) -> pd.DataFrame:
    """Write summary.csv and summary.md into `sweep_dir`, best job first by `sort_by`."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    if jobs.empty:
        log.warning("no job of %s wrote metrics.json; no summary written", sweep_dir)
        return jobs
    if sort_by in jobs.columns:
        jobs = jobs.sort_values(sort_by, ascending=False, kind="stable", ignore_index=True)
    jobs.to_csv(sweep_dir / "summary.csv", index=False)
    (sweep_dir / "summary.md").write_text(frame_to_markdown(jobs[_summary_columns(jobs.columns)]) + "\n")
    log.info("sweep summary of %d jobs: %s", len(jobs), sweep_dir / "summary.md")
    return jobs


def _summary_columns(columns: pd.Index) -> list[str]:
    """The markdown's columns: Recall@k and MRR@k for val and test, popularity's at the largest k, epochs."""
    ks = sorted({int(c.split("@")[1]) for c in columns if c.startswith("test/recall@")})
    wanted = [f"{split}/{name}@{k}" for split in ("val", "test") for k in ks for name in ("recall", "mrr")]
    if ks:
        wanted += [f"pop/test/recall@{ks[-1]}", f"pop/test/mrr@{ks[-1]}"]
    return ["job", "overrides"] + [c for c in [*wanted, "epochs"] if c in columns]


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, write the summary of all its jobs into the sweep directory."""

    def __init__(self, sort_by: str | None = None) -> None:
        self.sort_by = sort_by

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize_sweep(config.hydra.sweep.dir, self.sort_by)
