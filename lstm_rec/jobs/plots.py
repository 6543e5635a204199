"""Figures of a sweep: the objective against each swept parameter, and validation curves of the best jobs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: figures go to files, whatever backend the caller uses
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def objective_plots(jobs: pd.DataFrame, params: list[str], objective: str, out_dir: Path) -> list[Path]:
    """One PNG per swept parameter: each job's objective against its value (categories for non-numbers)."""
    paths = []
    for param in params:
        values = pd.to_numeric(jobs[param], errors="coerce")
        figure = Figure(figsize=(5, 3.5))
        axes = figure.subplots()
        if values.notna().all():
            axes.scatter(values, jobs[objective])
            if values.min() > 0 and values.max() / values.min() >= 20:
                axes.set_xscale("log")
        else:
            categories = sorted(jobs[param].astype(str).unique())
            positions = jobs[param].astype(str).map({c: i for i, c in enumerate(categories)})
            axes.scatter(positions, jobs[objective])
            axes.set_xticks(range(len(categories)), categories)
        axes.set_xlabel(param)
        axes.set_ylabel(objective)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        paths.append(out_dir / f"objective_vs_{_file_name(param)}.png")
        figure.savefig(paths[-1], dpi=100)
    return paths


def validation_curve(job_dir: Path, metric: str) -> pd.Series:
    """The metric per epoch (index: epoch 1, 2, ...) from a job's TensorBoard event files."""
    events = EventAccumulator(str(job_dir / "tensorboard")).Reload()
    if metric not in events.Tags()["scalars"]:
        return pd.Series(dtype=float)
    values = [event.value for event in events.Scalars(metric)]
    return pd.Series(values, index=range(1, len(values) + 1), name=job_dir.name)


def learning_curves(
    sweep_dir: Path, jobs: pd.DataFrame, params: list[str], metric: str, out: Path, best: int = 5
) -> Path:
    """Validation `metric` per epoch of the `best` first jobs of `jobs` (sorted best first), labelled by `params`."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for _, job in jobs.head(best).iterrows():
        curve = validation_curve(sweep_dir / str(job["job"]), metric)
        label = ", ".join(f"{p.split('.')[-1]}={_short(job[p])}" for p in params)
        axes.plot(curve.index, curve.values, marker="o", label=f"job {job['job']}: {label}"[:80])
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out


def _short(value: object) -> str:
    number = pd.to_numeric(value, errors="coerce")
    return f"{number:.4g}" if pd.notna(number) else str(value)


def _file_name(param: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in param)
