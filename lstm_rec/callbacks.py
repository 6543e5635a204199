"""Lightning plugins and callbacks that make runs reproducible across a crash and safe to write, and draw their
curves."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from lstm_rec.checkpoint import load_checked
from lstm_rec.checkpoint_checks import check_training_state

if TYPE_CHECKING:
    from lstm_rec.module import SessionRecModule

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, syncs it, then renames it into place; reads
    checkpoints weights-only and checked, as lstm_rec.checkpoint reads them.

    A crash or a full disk while saving leaves the previous checkpoint of that name intact; the
    rename is atomic because the temporary file is on the same filesystem as the target. Resuming and testing
    (Lightning's ckpt_path) load through here, never running code from the file whatever the environment says
    (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD), and a malformed file fails with a CheckpointError naming it.
    """

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Lightning's own arguments are ignored: always on the CPU (Lightning moves the state), always weights-only.
        checkpoint, _ = load_checked(path)
        check_training_state(checkpoint, f"ckpt_path '{path}'", resuming=False)
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        log.debug("saved checkpoint %s", path)


def check_tolerance(tolerance: float, name: str) -> float:
    """`tolerance` if it is a share >= 0, else a ValueError naming the setting."""
    if not tolerance >= 0:
        raise ValueError(f"{name} must be a share >= 0, got {tolerance}")
    return tolerance


def within_tolerance(value: float, best: float, tolerance: float, mode: str = "max") -> bool:
    """Whether `value` scores as well as `best` up to `tolerance`, a share of |best| (mode max: at least best minus that
    share; min: at most best plus it). The one rule of the tested checkpoint, early stopping and tune.py's final
    epochs (docs/experiments.md#the-tested-checkpoint)."""
    sign = 1.0 if mode == "max" else -1.0
    return sign * value >= sign * best - tolerance * abs(best)


class LatestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose last checkpoint (save_last) is always the latest epoch's state, and whose
    kept ("best") checkpoint may be the latest epoch within `tolerance` of the best.

    Lightning 2.6 rewrites last.ckpt only at a step where it also kept a best (top-k) checkpoint, so once the
    monitored metric stops improving, last.ckpt silently stays at the best epoch: test_ckpt=last would test that
    epoch, and ckpt_path=last would resume from it and train its later epochs again.

    `tolerance` (a share, 0 for off; with a monitor, one kept checkpoint, save_top_k=1): an epoch whose monitored
    value lies within that share of the best value so far replaces the kept checkpoint, so the run keeps the latest
    epoch that scores about as well as the best rather than an earlier one that won by the noise of a validation
    sample. Each new best is such an epoch, so one kept checkpoint is enough. docs/experiments.md#the-tested-checkpoint.
    """

    def __init__(self, *args: Any, tolerance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_tolerance(tolerance, "callbacks.model_checkpoint.tolerance")
        if tolerance and self.monitor is not None and self.save_top_k != 1:
            raise ValueError(
                "callbacks.model_checkpoint.tolerance keeps one checkpoint by the monitored value: it needs "
                f"save_top_k=1, got {self.save_top_k}"
            )
        self.tolerance = tolerance
        self.best_seen: float | None = None  # the best monitored value so far (the kept one may be a later, lower one)

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        if not self.tolerance or current is None:
            return super().check_monitor_top_k(trainer, current)
        value = float(current)
        if math.isnan(value):
            keep = self.best_seen is None
        else:
            if self.best_seen is None or (value > self.best_seen if self.mode == "max" else value < self.best_seen):
                self.best_seen = value
            keep = within_tolerance(value, self.best_seen, self.tolerance, self.mode)
        return trainer.strategy.reduce_boolean_decision(bool(keep))

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"best_seen": self.best_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_seen = state_dict.get("best_seen", self.best_seen)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_validation_end(trainer, module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        # The skip test is also true when this step was saved already (then last.ckpt was written with it).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PlateauEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping whose patience counts only the epochs more than `tolerance` (a share) worse than the
    best value so far: an epoch within that share of the best is as good as the best, so the run goes on (0: off,
    Lightning's rule). With a learning rate that decays to the last epoch, a validation curve often lies flat within
    a sample's noise for several epochs before the lowest rates give their gain; stopping there would cut the
    schedule short. docs/experiments.md#the-tested-checkpoint.
    """

    def __init__(self, *args: Any, tolerance: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tolerance = check_tolerance(tolerance, "callbacks.early_stopping.tolerance")

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        best = self.best_score.to(current.device)
        if self.tolerance and torch.isfinite(current) and torch.isfinite(best):
            improved = self.monitor_op(current - self.min_delta, best)
            if not improved and within_tolerance(float(current), float(best), self.tolerance, self.mode):
                self.wait_count = 0
                return False, (
                    f"Metric {self.monitor} = {float(current):.4f} lies within {100 * self.tolerance:g} % of the best "
                    f"{float(best):.4f}: patience starts again"
                )
        return super()._evaluate_stopping_criteria(current)


class EpochSeed(L.Callback):
    """Reseeds torch at the start of every training epoch from (seed, epoch, rank).

    Dropout masks and sampled negatives then depend only on the epoch, so a run resumed from an
    end-of-epoch checkpoint draws exactly what the uninterrupted run drew.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            return
        entropy = [self.seed % 2**32, trainer.current_epoch, trainer.global_rank]
        torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


class TrainingCurves(L.Callback):
    """Keeps the per-epoch values the run logs (train/loss_epoch, every val/ metric) and draws them into `path` when
    fitting ends, early stopping included, or fails.

    The values travel in checkpoints, so a resumed run draws all of its epochs; they are the logged values
    whichever logger (or none) the run has. A figure that cannot be drawn is a warning, never a failed run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.epochs: dict[int, dict[str, float]] = {}  # epoch (1, 2, ...) -> metric -> value

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, lambda name: name.startswith("val/"))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the checkpoint of this epoch is saved (ModelCheckpoint saves after the other callbacks).
        self._record(trainer, lambda name: name == "train/loss_epoch")

    def _record(self, trainer: L.Trainer, wanted: Callable[[str], bool]) -> None:
        values = {name: float(value) for name, value in trainer.callback_metrics.items() if wanted(name)}
        self.epochs.setdefault(trainer.current_epoch + 1, {}).update(values)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._draw(trainer)

    def _draw(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.epochs:
            return
        try:
            from lstm_rec.jobs.plots import training_curves  # matplotlib only when drawing

            training_curves(self.epochs, self.path)
        except Exception as error:  # the run's results matter more than its figure
            log.warning("could not draw the training curves into %s: %s: %s", self.path, type(error).__name__, error)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": {epoch: dict(values) for epoch, values in self.epochs.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = {int(epoch): dict(values) for epoch, values in state_dict.get("epochs", {}).items()}


def epochs_within(minutes: float, step_seconds: float, steps_per_epoch: int, epochs: int, low: int) -> int:
    """The most epochs, at most `epochs` and at least `low`, whose `steps_per_epoch` steps at `step_seconds` each train
    within `minutes`."""
    if not minutes > 0:
        raise ValueError(f"auto_epochs.minutes must be a number of minutes > 0 (or null for no budget), got {minutes}")
    if low < 1:
        raise ValueError(f"auto_epochs.low must be at least 1, got {low}")
    epoch_seconds = step_seconds * steps_per_epoch
    fit = math.floor(60.0 * minutes / epoch_seconds) if epoch_seconds > 0 else epochs
    return max(min(epochs, fit), min(low, epochs))


class EpochBudget(L.Callback):
    """trainer.max_epochs=auto on a machine too slow for those epochs: fewer of them, so that the training steps take
    at most `minutes` (validation and the work after training come on top).

    It times the first epoch's batches `skip` to `skip + measure - 1` (the first batches compile kernels and warm
    caches), projects an epoch from their steps' mean, and keeps the most epochs that fit, at least `low`
    (auto_epochs.low). The schedule's length (lstm_rec.schedules.WarmupDecay's steps, or a CosineAnnealingLR's T_max)
    follows. With the defaults the choice falls within the schedule's warm-up, whose rates do not depend on the
    run's length, so such a run trains as `trainer.max_epochs=N` would. After each epoch it checks again with the
    epochs' own times, validation included (`recheck`). The log says what was measured and chosen; the choice and the
    time spent travel in checkpoints, so a resumed run keeps them. docs/experiments.md#epochs-within-a-time-budget.
    """

    def __init__(self, minutes: float, low: int, skip: int = 1, measure: int = 4) -> None:
        epochs_within(minutes, 0.0, 1, 1, low)  # checks the settings
        if skip < 0 or measure < 1:
            raise ValueError(f"EpochBudget needs skip >= 0 and measure >= 1, got {skip} and {measure}")
        self.minutes, self.low, self.skip, self.measure = float(minutes), int(low), skip, measure
        self.chosen: int | None = None  # the epochs decided (None: not yet)
        self.spent = 0.0  # seconds of the epochs done, their validation included
        self._started: tuple[float, int] | None = None  # (time, global step) at the start of batch `skip`
        self._epoch_started: tuple[float, int] = (0.0, 0)

    def on_train_start(self, trainer: L.Trainer, pl_module: SessionRecModule) -> None:
        if self.chosen is not None and self.chosen != trainer.max_epochs:  # resumed: the epochs decided before
            self._apply(trainer, pl_module, self.chosen)
        elif trainer.current_epoch > 0:  # resumed from a checkpoint without this callback's state: keep the epochs
            self.chosen = int(trainer.max_epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = (time.perf_counter(), trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.chosen is None and self._started is None and batch_idx >= self.skip:
            self._started = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # One span from the start of batch `skip` to the end of batch skip + measure - 1: the batches' steps and the
        # loading of all but the first of them.
        if self.chosen is None and self._started is not None and batch_idx + 1 >= self.skip + self.measure:
            began, first = self._started
            seconds, steps = time.perf_counter() - began, trainer.global_step - first
            self._decide(trainer, pl_module, seconds / max(steps, 1), f"steps {first + 1}-{trainer.global_step}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        began, step = self._epoch_started
        seconds = time.perf_counter() - began  # the epoch's steps and its validation
        if self.chosen is None:  # an epoch of too few batches: its own time
            self._decide(trainer, pl_module, seconds / max(trainer.global_step - step, 1), "the first epoch")
        self.spent += seconds
        self.recheck(trainer, pl_module)

    def recheck(self, trainer: L.Trainer, pl_module: SessionRecModule) -> None:
        """After an epoch: where the epochs left, at the mean of those done (validation included), would take the
        training past `minutes`, fewer of them (never fewer than `low` in all). The first batches can be faster than
        the rest of the run, or the machine slower later on; the schedule's length then changes after its warm-up."""
        done, epochs = trainer.current_epoch + 1, int(trainer.max_epochs)
        if done >= epochs or self.spent <= 0:
            return
        mean = self.spent / done
        fit = done + math.floor(max(60.0 * self.minutes - self.spent, 0.0) / mean)
        chosen = int(trainer.strategy.broadcast(max(min(epochs, fit), min(self.low, epochs), done), src=0))
        if chosen < epochs:
            log.info(
                "trainer.max_epochs=auto: %d epochs instead of %d: the %d trained took %.1f minutes with their "
                "validation, so the %d would take about %.1f, more than auto_epochs.minutes=%g",
                chosen, epochs, done, self.spent / 60.0, epochs, epochs * mean / 60.0, self.minutes,
            )  # fmt: skip
            self._apply(trainer, pl_module, chosen)
            self.chosen = chosen

    def _decide(self, trainer: L.Trainer, pl_module: SessionRecModule, step_seconds: float, timed: str) -> None:
        epochs = int(trainer.max_epochs)
        per_epoch = int(pl_module.steps_per_epoch())
        chosen = epochs_within(self.minutes, step_seconds, per_epoch, epochs, self.low)
        chosen = int(trainer.strategy.broadcast(chosen, src=0))  # every process trains the same epochs
        measured = f"a step took {1e3 * step_seconds:.1f} ms ({timed}), an epoch holds {per_epoch:,} steps"
        if chosen < epochs:
            log.info(
                "trainer.max_epochs=auto: %d epochs instead of %d, whose steps would take about %.1f minutes, more "
                "than auto_epochs.minutes=%g: %s (the %d: about %.1f minutes; trainer.max_epochs=%d trains them all)",
                chosen, epochs, epochs * per_epoch * step_seconds / 60.0, self.minutes, measured, chosen,
                chosen * per_epoch * step_seconds / 60.0, epochs,
            )  # fmt: skip
            self._apply(trainer, pl_module, chosen)
        else:
            log.info(
                "trainer.max_epochs=auto: the %d epochs' steps take about %.1f minutes, within auto_epochs.minutes=%g:"
                " %s",
                epochs, epochs * per_epoch * step_seconds / 60.0, self.minutes, measured,
            )  # fmt: skip
        self.chosen = chosen

    def _apply(self, trainer: L.Trainer, pl_module: SessionRecModule, epochs: int) -> None:
        """Train `epochs` epochs, the schedule over them."""
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas and all(hasattr(f, "total_steps") for f in lambdas):
                total = pl_module.total_steps()
                for f in lambdas:
                    f.total_steps = total
            elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and config.interval == "epoch":
                scheduler.T_max = epochs
            else:
                log.warning(
                    "trainer.max_epochs=auto: the scheduler %s keeps the length it was built with: only "
                    "lstm_rec.schedules.warmup_decay and an epoch-wise CosineAnnealingLR follow the epochs chosen",
                    type(scheduler).__name__,
                )

    def state_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "spent": self.spent}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.chosen, self.spent = state_dict.get("chosen"), float(state_dict.get("spent", 0.0))
