"""Speed and memory of training and evaluation, measured on a real run of the configured job."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lstm_rec.data import SessionDataModule
from lstm_rec.data.batching import ParallelStep
from lstm_rec.evaluation import collect_ranks, metrics_of
from lstm_rec.jobs.environment import write_environment
from lstm_rec.jobs.report import write_json
from lstm_rec.jobs.runs import build_model, instantiate_all, prepare_run
from lstm_rec.module import SessionRecModule


class EpochClock(L.Callback):
    """Training seconds and targets of every epoch, and the validation metric after it."""

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = metrics
        self.epochs: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        _synchronize(module.device)
        self._targets = torch.zeros((), dtype=torch.long, device=module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if isinstance(batch, ParallelStep):  # session-parallel: one real (click, next click) pair per lane in use
            self._targets += len(batch.targets)
        elif isinstance(batch, list):  # several session-parallel steps (data.steps_per_batch)
            self._targets += sum(len(step.targets) for step in batch)
        else:  # windows: the targets are the non-padding positions after the first
            self._targets += (batch[:, 1:] > 0).sum()  # counted on the device, with no sync per step

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close_epoch(module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._close_epoch(module)  # epochs without validation end here

    def _close_epoch(self, module: L.LightningModule) -> None:
        if getattr(self, "_start", None) is None:
            return
        _synchronize(module.device)
        self.epochs.append({"train_seconds": time.perf_counter() - self._start, "targets": int(self._targets)})
        self._start = None

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for metric in self.metrics:
            if self.epochs and metric in trainer.callback_metrics:
                self.epochs[-1][metric] = float(trainer.callback_metrics[metric])


def benchmark(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured, then time evaluation; returns (and writes benchmark.json) the numbers."""
    prepare_run(cfg)
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    load_seconds = time.perf_counter() - start
    model = build_model(cfg, datamodule)
    targets = _targets(cfg)
    clock = EpochClock(list(targets))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[*instantiate_all(cfg.get("callbacks")), clock], logger=False
    )
    trainer.fit(model, datamodule=datamodule)
    model.to(trainer.strategy.root_device)
    results = {
        "device": str(model.device),
        "precision": str(cfg.trainer.precision),
        "n_items": datamodule.n_items,
        "train_events": datamodule.train_sessions.n_events,
        "train_targets_per_epoch": datamodule.train_sessions.n_targets,
        "load_seconds": round(load_seconds, 2),
    }
    results |= _training_numbers(clock, targets, cfg.monitor)
    results |= _evaluation_numbers(model, datamodule, list(cfg.model.ks))
    write_json(results, Path(cfg.paths.output_dir) / "benchmark.json", sort_keys=False)
    write_environment(cfg.paths.output_dir)
    return results


def _training_numbers(clock: EpochClock, targets: dict[str, float], monitor: str) -> dict[str, Any]:
    """Epoch times, steady training speed, the validation curves and the time to reach `targets`."""
    steady = clock.epochs[1:] or clock.epochs  # the first epoch carries warm-up
    steady_rate = sum(e["targets"] for e in steady) / sum(e["train_seconds"] for e in steady)
    reached = time_to_target(clock.epochs, targets)
    return {
        "epochs": len(clock.epochs),
        "epoch_seconds": [round(epoch["train_seconds"], 3) for epoch in clock.epochs],
        "train_events_per_second": round(steady_rate),
        _target_key(targets): None if reached is None else round(reached, 2),
        "val_curve": [round(epoch.get(monitor, float("nan")), 4) for epoch in clock.epochs],
        "val_curves": {
            metric: [round(epoch.get(metric, float("nan")), 4) for epoch in clock.epochs]
            for metric in dict.fromkeys([monitor, *targets])
        },
    }


def _evaluation_numbers(model: SessionRecModule, datamodule: SessionDataModule, ks: list[int]) -> dict[str, Any]:
    """Speed of ranking the test set, its metrics, and peak memory."""
    _synchronize(model.device)
    eval_start = time.perf_counter()
    scorer = datamodule.test_scorer(model.scorer()).to(model.device)
    ranked = collect_ranks(scorer, datamodule.test_dataloader(), max(ks), device=model.device)
    _synchronize(model.device)
    eval_seconds = time.perf_counter() - eval_start
    results = {
        "eval_predictions": len(ranked.ranks),
        "eval_predictions_per_second": round(len(ranked.ranks) / eval_seconds),
        "test": metrics_of(ranked, ks, "test/"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    if model.device.type == "cuda":
        results["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return results


def _targets(cfg: DictConfig) -> dict[str, float]:
    """`target` as {validation metric: value}: a number is the target of ${monitor}."""
    target = cfg.target
    if OmegaConf.is_dict(target):
        if not target:
            raise ValueError("target must be a number or a non-empty mapping {validation metric: value}")
        return {str(metric): float(value) for metric, value in target.items()}
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return {cfg.monitor: float(target)}
    raise ValueError(f"target must be a number or a mapping {{validation metric: value}}, got {target!r}")


def _target_key(targets: dict[str, float]) -> str:
    return "seconds_to_" + ",".join(f"{metric}>={value:g}" for metric, value in targets.items())


def time_to_target(epochs: list[dict[str, float]], targets: dict[str, float]) -> float | None:
    """Training seconds until the end of the first epoch that reached every target; None if none did."""
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch["train_seconds"]
        if all(epoch.get(metric, float("-inf")) >= value for metric, value in targets.items()):
            return elapsed
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
