"""Keeping a model fresh, measured as a shop would: day by day, fine-tune (a), retrain from scratch (b) or keep (c).

The log's last `n_days` days (by session start; a day is 86,400 s of its Time column) follow an initial part. One
model is trained on the initial part; then, after each later day but the last, (a) fine-tunes the previous (a)
model on that day's sessions with init_from, (b) trains a new model from scratch on everything so far, and (c)
keeps the initial model; all three are ranked on the following day's sessions.

All three rank the same predictions: the day's sessions on the items seen so far (the catalog of (a) and (b)).
(c) never recommends the items it does not know, and a click on one is a blank step of its input (the padding
row), as a running service without the new items would see them.

Each day's metrics are also given apart for the predictions whose target the initial model knew ("known/") and
for those on items new since ("new/"): where a strategy gains or loses, on the catalog it started with or on the
items that came later.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lstm_rec.checkpoint import load_network
from lstm_rec.data import FileDataModule, ItemIndex
from lstm_rec.data.io import read_events
from lstm_rec.data.sessions import SESSION, TIME
from lstm_rec.evaluation import CatalogScorer, RankedPredictions, collect_ranks, metrics_of, prediction_targets
from lstm_rec.jobs.config import load_config
from lstm_rec.jobs.report import write_json

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0
STRATEGIES = {"a": "fine-tune the previous model on the day", "b": "retrain from scratch on all so far", "c": "keep"}
COLUMNS = {"session": "SessionId", "item": "ItemId", "time": "Time"}
# Every training run: validation on a sample of its own latest day (an in-sample progress monitor, as in the
# yoochoose preset), a fixed number of epochs, the last checkpoint, nothing else written.
RUN = [
    "data=files",
    "data.valid_sample=200",
    "~prior",  # the strategies are compared on the network alone (prior=auto would choose on the sample)
    "~blend",  # and without the kNN blend, as the published numbers were measured
    "test_ckpt=last",
    "callbacks.early_stopping=null",
    "callbacks.progress_bar=null",
    "callbacks.training_curves=null",
    "callbacks.lr_monitor=null",
    "~logger",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def split_days(
    events: pd.DataFrame, n_days: int, day_seconds: float = DAY_SECONDS
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The sessions that start before the log's last `n_days` days, and those that start on each of those days (a
    day: `day_seconds` of the Time column)."""
    day = _days_back(events, day_seconds)
    parts = [events[day == d].reset_index(drop=True) for d in range(n_days, 0, -1)]
    initial = events[day > n_days].reset_index(drop=True)
    if initial.empty or any(part.empty for part in parts):
        span = (events[TIME].max() - events[TIME].min()) / day_seconds
        raise ValueError(
            f"the log spans {span:.1f} days of {day_seconds:g} s: it needs "
            f"sessions before its last {n_days} days and on each of them; give fewer or shorter days (--day-seconds)"
        )
    return initial, parts


def benchmark_fresh(
    data: Path,
    output_dir: Path,
    n_days: int,
    epochs: int,
    fine_tune_epochs: int,
    overrides: list[str],
    fine_tune_overrides: list[str] = (),
    replay_days: int = 0,
    day_seconds: float = DAY_SECONDS,
) -> dict[str, Any]:
    """Run the protocol on the log at `data`; returns (and writes fresh.json) each day's metrics and training
    seconds per strategy. `overrides` configure every run; `fine_tune_overrides` come after them in (a)'s runs,
    which fine-tune on the sessions of the day and of the `replay_days` days before it. A day is `day_seconds` of the
    log's Time column (7 * 86,400 for weeks)."""
    if not day_seconds > 0:
        raise ValueError(f"day_seconds must be positive, got {day_seconds}")
    initial, days = split_days(read_events(data, "data"), n_days, day_seconds)
    files = output_dir / "data"
    files.mkdir(parents=True, exist_ok=True)
    day_files = [_write(part, files / f"day_{d + 1}.parquet") for d, part in enumerate(days)]
    so_far = initial
    first = _train(
        "initial", _write(initial, files / "initial.parquet"), day_files[0], epochs, overrides, output_dir, day_seconds
    )
    checkpoints = {"a": first["checkpoint"], "b": first["checkpoint"], "c": first["checkpoint"]}
    n_initial = len(load_network(first["checkpoint"]).item_index)
    rows, seconds = [], {name: 0.0 for name in STRATEGIES}
    for d in range(1, n_days):
        so_far = pd.concat([so_far, days[d - 1]], ignore_index=True)
        runs = {
            "a": _train(f"a_day_{d}",
                        _write(_window(initial, days, d, replay_days, day_seconds), files / f"a_{d}.parquet"),
                        day_files[d], fine_tune_epochs,
                        [*overrides, *fine_tune_overrides, f"init_from={checkpoints['a']}"], output_dir, day_seconds),
            "b": _train(f"b_day_{d}", _write(so_far, files / f"up_to_day_{d}.parquet"), day_files[d], epochs,
                        overrides, output_dir, day_seconds),
        }  # fmt: skip
        for name, run in runs.items():
            checkpoints[name] = run["checkpoint"]
            seconds[name] += run["train_seconds"]
        catalog = load_network(checkpoints["a"]).item_index
        for name in STRATEGIES:
            metrics = _evaluate(checkpoints[name], catalog, day_files[d], n_initial)
            run = runs.get(name, {"train_seconds": 0.0, "wall_seconds": 0.0})
            rows.append({"trained_on_day": d, "tested_on_day": d + 1, "strategy": name, **metrics,
                         "train_seconds": run["train_seconds"], "wall_seconds": run["wall_seconds"]})  # fmt: skip
            log.info("day %d, %s: %s", d + 1, name, rows[-1])
    results = {
        "data": str(data),
        "n_days": n_days,
        "day_seconds": day_seconds,
        "epochs": epochs,
        "fine_tune_epochs": fine_tune_epochs,
        "overrides": list(overrides),
        "fine_tune_overrides": list(fine_tune_overrides),
        "replay_days": replay_days,
        "initial": {"sessions": int(initial[SESSION].nunique()), "train_seconds": first["train_seconds"]},
        "day_sessions": [int(part[SESSION].nunique()) for part in days],
        "days": rows,
        "total_train_seconds": seconds,
        "mean": {name: _mean([r for r in rows if r["strategy"] == name]) for name in STRATEGIES},
    }
    write_json(results, output_dir / "fresh.json")
    return results


def _window(
    initial: pd.DataFrame, days: list[pd.DataFrame], d: int, replay_days: int, day_seconds: float
) -> pd.DataFrame:
    """The sessions of later day `d` (1-based) and of the `replay_days` days before it."""
    first = d - 1 - replay_days
    parts = days[max(first, 0) : d]
    if first < 0:
        parts = [_latest(initial, -first, day_seconds), *parts]
    return pd.concat(parts, ignore_index=True)


def _latest(events: pd.DataFrame, n_days: int, day_seconds: float) -> pd.DataFrame:
    """The sessions that start in the last `n_days` days of `events` (by split_days' rule)."""
    return events[_days_back(events, day_seconds) <= n_days].reset_index(drop=True)


def _days_back(events: pd.DataFrame, day_seconds: float) -> np.ndarray:
    """Each row's day by its session's start, counted back from the log's last click: 1 the last day (its end
    included), 2 the one before, ..."""
    starts = events.groupby(SESSION, sort=False)[TIME].transform("min")
    return np.ceil((events[TIME].max() - starts) / day_seconds).clip(lower=1).to_numpy()


def _write(events: pd.DataFrame, path: Path) -> Path:
    events.rename(columns=COLUMNS).to_parquet(path, index=False)
    return path


def _train(
    name: str,
    train: Path,
    test: Path,
    epochs: int,
    overrides: list[str],
    output_dir: Path,
    day_seconds: float,
) -> dict[str, Any]:
    """One training run (the train job itself) on `train`, validated on its own latest day."""
    from lstm_rec.jobs.train import train as train_job

    frame = pd.read_parquet(train)
    valid = train.with_suffix(".valid.parquet")
    frame[frame["Time"] >= frame["Time"].max() - day_seconds].to_parquet(valid, index=False)
    data = [f"data.train={train}", f"data.valid={valid}", f"data.test={test}", f"trainer.max_epochs={epochs}"]
    # The day files hold seconds (read_events' times), whatever unit the log's numbers were in.
    run = [*RUN, *data, *overrides, "data.time_unit=s"]
    cfg = load_config("train", run, output_dir=str(output_dir / "runs" / name))
    log.info("training %s on %s for %d epochs", name, train.name, epochs)
    return train_job(cfg)


def _evaluate(checkpoint: str, catalog: ItemIndex, day: Path, n_initial: int) -> dict[str, float | None]:
    """Recall@20 and MRR@20 of a checkpoint on a day's sessions over `catalog`, for all predictions and apart for
    those on the initial model's `n_initial` items (the first of the catalog) and on the items new since."""
    trained = load_network(checkpoint)
    datamodule = FileDataModule(test=str(day))
    datamodule.item_index = catalog
    datamodule.setup("test")
    batches = list(datamodule.full_dataloader("test"))
    ranked = collect_ranks(CatalogScorer(trained.scorer(), trained.item_index, catalog), batches, k_max=20)
    return known_and_new(ranked, torch.cat([prediction_targets(batch) for batch in batches]), n_initial)


def known_and_new(ranked: RankedPredictions, targets: Tensor, n_initial: int) -> dict[str, float | None]:
    """Recall@20, MRR@20 and the prediction count of all of `ranked`, and under "known/" and "new/" of those whose
    target column is below `n_initial` and of the rest (metrics None, null in fresh.json, for a part without
    predictions)."""
    results = {}
    for prefix, rows in (("", None), ("known/", targets < n_initial), ("new/", targets >= n_initial)):
        part = ranked if rows is None else ranked.subset(rows)
        keys = (f"{prefix}recall@20", f"{prefix}mrr@20", f"{prefix}n_predictions")
        if len(part.ranks) == 0:
            results |= dict(zip(keys, (None, None, 0.0), strict=True))
            continue
        metrics = metrics_of(part, [20], prefix)
        results |= {key: metrics[key] for key in keys}
    return results


def _mean(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each metric's mean over the days (the parts' over the days that have predictions in them)."""
    means = {}
    for key in (f"{part}{name}" for part in ("", "known/", "new/") for name in ("recall@20", "mrr@20")):
        values = [r[key] for r in rows if r[key] is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table(results: dict[str, Any]) -> str:
    """The per-day results and totals as a Markdown table; Recall@20 also apart for the targets the initial model
    knew and for the items new since."""
    lines = [
        "| tested on day | strategy | recall@20 | mrr@20 | recall@20 known / new | predictions (new) | training s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["days"]:
        lines.append(
            f"| {row['tested_on_day']} | {row['strategy']}: {STRATEGIES[row['strategy']]} | {row['recall@20']:.4f} | "
            f"{row['mrr@20']:.4f} | {_number(row['known/recall@20'])} / {_number(row['new/recall@20'])} | "
            f"{int(row['n_predictions'])} ({int(row['new/n_predictions'])}) | {row['train_seconds']:.1f} |"
        )
    for name, label in STRATEGIES.items():
        mean = results["mean"][name]
        lines.append(
            f"| mean | {name}: {label} | {mean['recall@20']:.4f} | {mean['mrr@20']:.4f} | "
            f"{_number(mean['known/recall@20'])} / {_number(mean['new/recall@20'])} | | "
            f"{results['total_train_seconds'][name]:.1f} |"
        )
    return "\n".join(lines)
