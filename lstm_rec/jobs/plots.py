"""Figures of a run (its training curves) and of a sweep (the objective against each swept parameter, and
validation curves of the best jobs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: figures go to files, whatever backend the caller uses
from matplotlib.ticker import MaxNLocator
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


PANEL_LABELS = {"loss": "loss", "recall": "validation Recall@k", "mrr": "validation MRR@k"}


def curve_panels(epochs: Mapping[int, Mapping[str, float]]) -> dict[str, pd.DataFrame]:
    """What training_curves draws: per panel, one column per metric and one row per epoch (1, 2, ...); NaN where
    an epoch did not log a metric."""
    table = pd.DataFrame.from_dict({epoch: dict(values) for epoch, values in epochs.items()}, orient="index")
    table = table.sort_index().rename_axis("epoch")
    panels = {
        "loss": [name for name in ("train/loss_epoch", "val/loss") if name in table],
        "recall": _by_cutoff(table.columns, "val/recall@"),
        "mrr": _by_cutoff(table.columns, "val/mrr@"),
    }
    return {panel: table[names] for panel, names in panels.items() if names}


def training_curves(epochs: Mapping[int, Mapping[str, float]], out: Path) -> Path:
    """The training and validation loss, and the validation Recall@k and MRR@k, per epoch, side by side in `out`."""
    panels = curve_panels(epochs)
    figure = Figure(figsize=(4.5 * len(panels), 3.5))
    for axes, (panel, table) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True):
        for name in table:
            axes.plot(table.index, table[name], marker="o", label=name)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(PANEL_LABELS[panel])
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out


def _by_cutoff(names: pd.Index, prefix: str) -> list[str]:
    """The names `prefix`k, sorted by k."""
    cutoffs = sorted(int(name[len(prefix) :]) for name in names if name.startswith(prefix))
    return [f"{prefix}{k}" for k in cutoffs]


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
