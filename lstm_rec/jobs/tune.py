"""The tuning job (scripts/tune.py): an Optuna search on a validation split cut by time, hopeless trials stopped
early, the best configuration retrained on all the training data and tested once, and a report.

Optuna is used directly, not through Hydra's Optuna sweeper: the sweeper cannot prune trials. The version is the
one the sweeper pins (2.10); its study, TPE sampler, median pruner and report/should_prune calls are the ones
later releases keep. The study lives in study.db (SQLite) in the run directory, so that `workers` processes can
share it: each runs trials at its share of the threads, and on a 2-core CPU two one-thread trials at a time finish
more trials an hour than one at two threads (docs/experiments.md#tuning-on-your-own-data).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import multiprocessing
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from lstm_rec.callbacks import check_tolerance, within_tolerance
from lstm_rec.data.io import read_events
from lstm_rec.data.sessions import ITEM, SESSION, TIME, split_by_start_time
from lstm_rec.jobs.environment import write_environment
from lstm_rec.jobs.prior_choice import CHOOSABLE, RECENT_TARGET, fixed_blend, has_blend, is_blend_search, is_search
from lstm_rec.jobs.report import frame_to_markdown, write_json
from lstm_rec.jobs.runs import checkpoint_epochs, logged_cutoff, prepare_run
from lstm_rec.jobs.train import train, unvalidated
from lstm_rec.module import NonFiniteLossError
from lstm_rec.threads import apply_threads

log = logging.getLogger(__name__)

# The trial's user attribute that holds its `guard` metric (conf/tune.yaml).
GUARD = "guard"


class PruneTrial(L.Callback):
    """Reports the monitored validation metric to an Optuna trial after every epoch and stops the trial when the
    pruner judges it hopeless or the search's time is up. (Optuna 2.10's own callback is for pytorch_lightning.)"""

    def __init__(self, trial: optuna.Trial, monitor: str, deadline: float) -> None:
        # deadline: wall-clock seconds (time.time()), which every worker process reads alike
        self.trial, self.monitor, self.deadline = trial, monitor, deadline

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), trainer.current_epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor}={float(value):.4f} after epoch {trainer.current_epoch + 1}")
        # A trial that has trained its last epoch completes even past the deadline: its result is whole.
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if time.time() > self.deadline and not last_epoch:
            raise optuna.TrialPruned("the search's time is up")


def tune(cfg: DictConfig) -> dict[str, Any]:
    """Search, retrain the best on all the training data, test it; returns the final run's metrics."""
    guard = resolve_guard(cfg.get("guard"), cfg.monitor)
    check_guard(guard, list(cfg.model.ks))
    OmegaConf.update(cfg, "guard", guard, merge=False)  # auto resolved, for the trials, the workers and the pick
    prepare_run(cfg)
    out = Path(cfg.paths.output_dir)
    _check_fresh(out)
    workers = _workers(cfg)
    OmegaConf.update(cfg, "workers", workers, merge=False)  # auto resolved, for the sampler and the worker processes
    splits = tuning_splits(cfg, out / "data")
    deadline = time.time() + 60 * cfg.budget_minutes
    storage = f"sqlite:///{out / 'study.db'}"
    study = make_study(cfg, storage)
    threads = threads_per_worker(workers)
    if workers > 1:
        log.info(
            "tune: %d worker processes share the study (%s), %d thread(s) each; workers 1-%d log to %s",
            workers, out / "study.db", threads, workers - 1, out / "worker_N.log",
        )  # fmt: skip
    detached = _detached(cfg)
    context = multiprocessing.get_context("spawn")  # fresh processes: no forked torch or OpenMP state
    # Not daemons: a worker's trials may start loader processes of their own (data.num_workers).
    arguments = (detached, storage, study.study_name, splits, deadline)
    others = [context.Process(target=_worker, args=(*arguments, worker, threads)) for worker in range(1, workers)]
    for process in others:
        process.start()
    try:
        search(study, cfg, splits, deadline, worker=0, threads=threads)
    except BaseException:  # an error or Ctrl-C here ends the whole search
        for process in others:
            process.terminate()
        raise
    finally:
        for process in others:
            process.join()
    failed = [worker for worker, process in enumerate(others, start=1) if process.exitcode != 0]
    if failed:
        names = ", ".join(str(out / f"worker_{worker}.log") for worker in failed)
        raise RuntimeError(f"tune: worker process(es) {failed} failed; their logs: {names}")
    study = optuna.load_study(study_name=study.study_name, storage=_storage(storage))
    best = chosen_trial(study, cfg.monitor, guard)
    final = _final_config(cfg, best, splits, out / "final")
    metrics = train(final)
    # Every completed trial's line, for a trial that another metric prefers.
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    lines = {t.number: override_line(t, _final_config(cfg, t, splits, out / "final", quiet=True)) for t in completed}
    write_report(study, final, metrics, out, best, lines)
    return metrics


# guard=auto: the other of the two headline metrics at the monitor's cutoff (NDCG, which leans toward the top ranks as
# MRR does, is guarded by recall).
AUTO_GUARDS = {"val/mrr@": "val/recall@", "val/recall@": "val/mrr@", "val/ndcg@": "val/recall@"}


def resolve_guard(guard: str | None, monitor: str) -> str | None:
    """tune's `guard` with `auto` resolved (AUTO_GUARDS; None for a monitor that is no ranking metric), and logged."""
    if guard != "auto":
        return guard
    for prefix, other in AUTO_GUARDS.items():
        if str(monitor).startswith(prefix):
            chosen = other + str(monitor).removeprefix(prefix)
            log.info(
                "guard=auto: %s (the final run retrains the best trial by %s among those that keep the first "
                "trial's %s; guard=null: the best by %s alone)", chosen, monitor, chosen, monitor,
            )  # fmt: skip
            return chosen
    log.info("guard=auto: none (monitor=%s is no ranking metric: the best trial by it alone)", monitor)
    return None


def check_guard(guard: str | None, ks: list[int]) -> None:
    """tune's `guard` (after resolve_guard): null, or a ranking metric on the validation sessions at one of
    model.ks."""
    if guard is None:
        return
    if not str(guard).startswith(CHOOSABLE) or not logged_cutoff(guard, ks):
        raise ValueError(
            f"guard={guard!r}: expected auto, null or a validation metric that the trials log, val/recall@K, "
            f"val/mrr@K or val/ndcg@K with K one of model.ks={ks}"
        )


def chosen_trial(study: optuna.Study, monitor: str, guard: str | None) -> optuna.trial.FrozenTrial:
    """The trial the final run retrains: the completed trial of the best `monitor` among those whose `guard` metric is
    at least the first trial's (the configured values); every completed trial without a guard, or when the first
    trial did not complete."""
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return study.best_trial  # Optuna's own error: no trial completed
    best = max(completed, key=lambda trial: trial.value)
    floor = _guard_floor(study)
    if guard is None or floor is None:
        return best
    eligible = guard_candidates(study)
    chosen = max(eligible, key=lambda trial: trial.value)  # the first trial is always eligible
    below = [trial for trial in completed if trial.value > chosen.value and trial not in eligible]
    for trial in sorted(below, key=lambda trial: -trial.value):
        log.info(
            "guard: trial %d (%s %.4f) is no candidate: its %s %.4f lies below the first trial's %.4f",
            trial.number, monitor, trial.value, guard, trial.user_attrs.get(GUARD, math.nan), floor,
        )  # fmt: skip
    log.info(
        "tune: trial %d chosen: %s %.4f, %s %.4f (the first trial's %.4f)",
        chosen.number, monitor, chosen.value, guard, chosen.user_attrs[GUARD], floor,
    )  # fmt: skip
    return chosen


def search(
    study: optuna.Study, cfg: DictConfig, splits: dict[str, str], deadline: float, worker: int, threads: int
) -> None:
    """Run trials of `study` until the deadline (wall clock) or max_trials, each at `threads` threads; a trial whose
    loss turned NaN fails and the search goes on."""
    out = Path(cfg.paths.output_dir)

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = _with(cfg, _suggest(trial, cfg.search), splits, out / f"trial_{trial.number:03d}")
        OmegaConf.update(trial_cfg, "num_threads", threads, merge=False)
        if worker > 0:  # one progress bar on the terminal: the first worker's
            OmegaConf.update(trial_cfg, "callbacks.progress_bar", None, merge=False)
            OmegaConf.update(trial_cfg, "trainer.enable_progress_bar", False, merge=False)
        log.info("trial %d (worker %d, %d thread(s)): %s", trial.number, worker, threads, trial.params)
        apply_threads(threads)  # as the trial's run does, so that even a pruned trial records it
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("threads", torch.get_num_threads())
        metrics = train(trial_cfg, callbacks=[PruneTrial(trial, cfg.monitor, deadline)])
        trial.set_user_attr("epochs", checkpoint_epochs(metrics["checkpoint"]))
        for name, value in validation_metrics(metrics, cfg.model.ks).items():  # the report's trade-offs
            trial.set_user_attr(name, value)
        if cfg.get("guard") is not None:  # the metric the chosen trial must not lose against the first trial
            trial.set_user_attr(GUARD, float(metrics[cfg.guard]))
        if "prior_weight" in metrics:  # prior=auto's choice for this trial's network (weight 0: none)
            prior = {"weight": metrics["prior_weight"], "hours": metrics["prior_hours"]}
            trial.set_user_attr("prior", _plain(prior))
        if "blend_weight" in metrics:  # the kNN blend's weight for this trial's network (0: none)
            blend = {"weight": metrics["blend_weight"], "knn": metrics.get("blend_knn")}
            trial.set_user_attr("blend", _plain(blend | {"repeat": metrics.get("blend_repeat")}))
        return float(metrics[cfg.monitor])

    # Trials in every state count, the running ones too: with several workers the search stops at max_trials (a
    # worker that finds max_trials reached starts no other).
    with quiet_optuna():  # MaxTrialsCallback is experimental in Optuna 2.10
        stop = [] if cfg.max_trials is None else [optuna.study.MaxTrialsCallback(cfg.max_trials, states=None)]
    timeout = max(0.0, deadline - time.time())
    study.optimize(objective, timeout=timeout, callbacks=stop, catch=(NonFiniteLossError,))


def _worker(
    cfg: DictConfig, storage: str, name: str, splits: dict[str, str], deadline: float, worker: int, threads: int
) -> None:
    """A worker process: its own log file, the shared study, trials until the deadline."""
    out = Path(cfg.paths.output_dir)
    handlers = [logging.FileHandler(out / f"worker_{worker}.log"), logging.StreamHandler(sys.stderr)]
    form = f"[%(asctime)s][worker {worker}][%(name)s][%(levelname)s] - %(message)s"
    logging.basicConfig(level=logging.INFO, format=form, handlers=handlers, force=True)
    study = optuna.load_study(study_name=name, storage=_storage(storage), **_search_parts(cfg, worker))
    search(study, cfg, splits, deadline, worker, threads)


# workers=auto on a CPU: two trials at a time, each at half the threads. Measured on 2 cores only (two one-thread
# trials beat one two-thread trial by 1.23-1.36 times the throughput, docs/tuning-log.md#two-trials-at-a-time);
# on a larger CPU, set workers=N to run more.
AUTO_CPU_WORKERS = 2


def _workers(cfg: DictConfig) -> int:
    """tune's `workers`: a whole number >= 1, or ``auto``; several need one process per trial (no trainer strategy
    such as ddp, no several devices or nodes). ``auto`` is 2 on a CPU with at least 2 threads, else 1 (one thread, a
    GPU, or a trial in several processes)."""
    workers = cfg.get("workers", 1)
    several = _processes_per_trial(cfg)
    if isinstance(workers, str) and workers.strip().lower() == "auto":
        workers, why = _auto_workers(cfg, several)
        log.info("tune: workers=auto: %d (%s; set workers=N to choose)", workers, why)
        return workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers (trials run at a time) must be a whole number >= 1 or auto, got {workers!r}")
    if workers > 1 and several:
        raise ValueError(
            f"workers={workers} runs several trials at a time, one process each; {several} runs each trial in "
            "several processes: use workers=1 with it"
        )
    return workers


def _processes_per_trial(cfg: DictConfig) -> str | None:
    """The trainer setting that runs one trial in several processes (a strategy such as ddp, several devices or
    nodes), or None."""
    trainer = cfg.trainer
    strategy = trainer.get("strategy")
    if strategy not in (None, "auto"):
        return f"trainer.strategy={strategy}"
    devices = trainer.get("devices", 1)
    if (isinstance(devices, int) and devices > 1) or (OmegaConf.is_list(devices) and len(devices) > 1):
        return f"trainer.devices={devices}"
    if (trainer.get("num_nodes") or 1) > 1:
        return f"trainer.num_nodes={trainer.num_nodes}"
    return None


def _auto_workers(cfg: DictConfig, several: str | None) -> tuple[int, str]:
    """workers=auto's count and the reason for it."""
    if several:
        return 1, f"{several} runs each trial in several processes"
    accelerator = str(cfg.trainer.get("accelerator", "cpu")).lower()
    if accelerator == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        accelerator = "gpu"
    if accelerator not in ("cpu", "auto"):
        return 1, f"one trial at a time on trainer.accelerator={accelerator}"
    threads = torch.get_num_threads()
    workers = max(1, min(AUTO_CPU_WORKERS, threads))
    each = threads_per_worker(workers)
    return workers, f"{threads} CPU thread(s) (num_threads): {workers} trial(s) at a time, {each} thread(s) each"


def threads_per_worker(workers: int) -> int:
    """Each worker's share of torch's threads (num_threads), at least one."""
    return max(1, torch.get_num_threads() // workers)


def _detached(cfg: DictConfig) -> DictConfig:
    """`cfg` for a worker process, where Hydra is not running: the paths that Hydra's resolver gives, as strings."""
    detached = copy.deepcopy(cfg)
    raw = OmegaConf.to_container(cfg.paths, resolve=False)
    for key, value in raw.items():
        if isinstance(value, str) and "${hydra:" in value:
            OmegaConf.update(detached, f"paths.{key}", OmegaConf.select(cfg, f"paths.{key}"), merge=False)
    return detached


def _plain(value: Any) -> Any:
    """`value` as plain JSON types (the study's database stores trial attributes as JSON)."""
    return json.loads(json.dumps(value, default=float))


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The study's SQLite database; a worker waits up to a minute for another's write."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def make_study(cfg: DictConfig, storage: str | None = None) -> optuna.Study:
    """The search: TPE after `startup_trials` random ones, the configured values first, then each of `variants` (changes
    to them); a median pruner that stops a trial below the median curve of the completed ones once
    `prune_after_trials` have completed, from its (`warmup_epochs` + 1)-th epoch on. In memory, or in the
    `storage` database (a URL) that worker processes share."""
    study = optuna.create_study(
        direction="maximize", storage=None if storage is None else _storage(storage), **_search_parts(cfg, worker=0)
    )
    defaults = _defaults(cfg)
    with quiet_optuna():
        study.enqueue_trial(defaults)  # the configured values are the first trial
        for changes in cfg.get("variants") or []:  # then the configured values with each variant's changes
            study.enqueue_trial(defaults | _variant(cfg.search, changes))
    return study


def _search_parts(cfg: DictConfig, worker: int) -> dict[str, Any]:
    """The sampler and pruner of one worker: its own seed (seed + worker), so that workers draw different random
    trials, and with several workers TPE's constant liar, which counts the running trials as bad ones so that
    two workers do not try the same values at once."""
    several = cfg.get("workers", 1) > 1
    with quiet_optuna():  # constant_liar is experimental in Optuna 2.10
        sampler = optuna.samplers.TPESampler(
            seed=None if cfg.seed is None else cfg.seed + worker,
            n_startup_trials=cfg.startup_trials,
            constant_liar=several,
        )
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after_trials, n_warmup_steps=cfg.warmup_epochs)
    return {"sampler": sampler, "pruner": pruner}


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna 2.10's ExperimentalWarning silenced: the queued trials and the plots use calls that version marks
    experimental (enqueue_trial, the matplotlib plots), and each would warn on every search."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def tuning_splits(cfg: DictConfig, folder: Path) -> dict[str, str]:
    """The files the search trains and validates on, and all the training data for the final run. Without
    data.valid, the sessions of data.train that start last (tune's valid_fraction) validate: they and the rest are
    written to `folder` with their times in seconds, which "time_unit" names for the trials (the final run reads
    data.train in data.time_unit)."""
    data = cfg.data
    if data.get("train") is None or data.get("test") is None:
        raise ValueError("tuning needs data=files with data.train=PATH and data.test=PATH (data.valid=PATH optional)")
    if data.get("valid") is not None:
        return {"train": data.train, "valid": data.valid, "full": data.train}
    events = read_events(
        Path(data.train), "data.train", data.session_col, data.item_col, data.time_col, data.sep,
        time_unit=data.get("time_unit", "auto"),
    )  # fmt: skip
    tr, valid = split_by_start_time(events, cfg.valid_fraction, "tuning validation")
    folder.mkdir(parents=True, exist_ok=True)
    names = {SESSION: data.session_col, ITEM: data.item_col, TIME: data.time_col}
    paths = {"train": str(folder / "train_tr.parquet"), "valid": str(folder / "train_valid.parquet")}
    tr.rename(columns=names).to_parquet(paths["train"], index=False)
    valid.rename(columns=names).to_parquet(paths["valid"], index=False)
    return paths | {"full": data.train, "time_unit": "s"}


def _defaults(cfg: DictConfig) -> dict[str, Any]:
    """The configured value of every searched key, which must lie in its search space."""
    values = {}
    for key, spec in cfg.search.items():
        value = OmegaConf.select(cfg, key)
        if not _inside(spec, value):
            raise ValueError(f"{key}={value} lies outside its search space {_space(spec)}: set {key} or search.{key}")
        values[key] = value
    return values


def _variant(search: DictConfig, changes: Any) -> dict[str, Any]:
    """One entry of `variants`: a mapping of searched keys to values inside their search space."""
    if not isinstance(changes, DictConfig) or not changes:
        example = "{model.repeat_window: 10}"
        raise ValueError(f"variants: each entry must map searched keys to values, e.g. {example}, got {changes}")
    values = {}
    for key, value in changes.items():
        spec = search.get(key)
        if spec is None:
            raise ValueError(f"variants: {key} is not a searched key (search: {', '.join(search)})")
        if not _inside(spec, value):
            raise ValueError(f"variants: {key}={value} lies outside its search space {_space(spec)}")
        values[key] = value
    return values


def _inside(spec: DictConfig, value: Any) -> bool:
    return value in spec.choices if "choices" in spec else value is not None and spec.low <= value <= spec.high


def _space(spec: DictConfig) -> Any:
    return list(spec.choices) if "choices" in spec else f"[{spec.low}, {spec.high}]"


def _suggest(trial: optuna.Trial, search: DictConfig) -> dict[str, Any]:
    """One value per searched key: `choices` picks among values, `low`/`high` (with `log`) a number."""
    values = {}
    for key, spec in search.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec.choices))
        elif isinstance(spec.low, int) and isinstance(spec.high, int):
            values[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.get("log", False))
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.get("log", False))
    return values


def _check_fresh(out: Path) -> None:
    """A search writes trial_NNN/ and final/ afresh: an earlier search's folders there would mix its checkpoints with
    this one's (Lightning writes last-v1.ckpt beside a stale last.ckpt), so they are refused before anything runs."""
    earlier = sorted(p.name for p in [*out.glob("trial_*"), out / "final"] if p.is_dir())
    if earlier:
        shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise FileExistsError(
            f"tune: '{out}' already holds an earlier search ({shown}); give this one a new directory "
            "(hydra.run.dir=DIR) or remove those folders"
        )


def _with(cfg: DictConfig, values: dict[str, Any], splits: dict[str, str], output_dir: Path) -> DictConfig:
    """A training config: `cfg` with `values`, trained on the tuning split and "tested" on its validation part."""
    trial_cfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(trial_cfg, key, value, merge=False)
    data = {"data.train": splits["train"], "data.valid": splits["valid"], "data.test": splits["valid"]}
    if "time_unit" in splits:  # the split files' unit (seconds), whatever the user's files were in
        data["data.time_unit"] = splits["time_unit"]
    # Trials validate on the tuning split; the final run already trains on all of the training data: no refit.
    for key, value in (data | {"paths.output_dir": str(output_dir), "test_ckpt": "best", "refit": False}).items():
        OmegaConf.update(trial_cfg, key, value, merge=False)
    return trial_cfg


def _final_config(
    cfg: DictConfig, best: optuna.trial.FrozenTrial, splits: dict[str, str], output_dir: Path, quiet: bool = False
) -> DictConfig:
    """The best values trained on all the training data for the epochs that served best (final_epochs), then tested
    once; `quiet`: without logging the choices (a trial's line in the report, not the final run)."""
    say = (lambda *args: None) if quiet else log.info
    final = _with(cfg, best.params, splits, output_dir)
    tolerance = cfg.get("final_epochs_tolerance", 0.0)
    epochs = final_epochs(best, tolerance) or cfg.trainer.max_epochs
    say(
        "final run: %s epochs on all the training data (trial %d: best epoch %s; the latest within %g %% of its best "
        "validation value, final_epochs_tolerance=%g)", epochs, best.number, best.user_attrs.get("epochs"),
        100 * tolerance, tolerance,
    )  # fmt: skip
    # Its data.train holds the search's validation sessions: it validates on nothing rather than on sessions it trains
    # on (whose val/ figures would flatter it), and its epochs come from the best trial.
    test = {"data.train": splits["full"], "data.test": cfg.data.test, "trainer.max_epochs": epochs, "test_ckpt": "last"}
    if "time_unit" in splits:  # the user's files again
        test["data.time_unit"] = cfg.data.get("time_unit", "auto")
    final = unvalidated(final, test)
    chosen = best.user_attrs.get("prior")
    if is_search(final.get("prior")):  # prior=auto: the best trial's choice, made from all the training data
        prior = None if not chosen or chosen["weight"] <= 0 else {"_target_": RECENT_TARGET, **chosen}
        say("final run: the recent-popularity prior of trial %d: %s", best.number, prior or "none")
        OmegaConf.update(final, "prior", prior, merge=False)
    blend = best.user_attrs.get("blend")
    if is_blend_search(final.get("blend")):  # blend=auto: the best trial's choice, made from all the training data
        fixed = None
        if has_blend(blend):
            fixed = fixed_blend(final.blend, blend["weight"], blend.get("knn"), blend.get("repeat"))
        say("final run: the kNN blend of trial %d: %s", best.number, fixed or "none")
        OmegaConf.update(final, "blend", fixed, merge=False)
    return final


def final_epochs(trial: optuna.trial.FrozenTrial, tolerance: float) -> int | None:
    """The epochs the final run trains: the trial's latest validated epoch whose value lies within `tolerance` (a share
    of it) of the trial's best. Where the curve has levelled off, the best epoch on a validation sample is as likely
    an early one as a late one, and the final run, which decays its rate over these epochs, gains from the later
    ones (docs/experiments.md). With tolerance 0, or without a curve, the best epoch (the trial's record)."""
    check_tolerance(tolerance, "final_epochs_tolerance")
    # epoch index (from 0) -> the monitored value after it
    curve = {epoch: value for epoch, value in trial.intermediate_values.items() if math.isfinite(value)}
    if not curve:
        return trial.user_attrs.get("epochs")
    best = max(curve.values())
    return 1 + max(epoch for epoch, value in curve.items() if within_tolerance(value, best, tolerance))


# The completed trials' validation metrics the report shows beside the objective, at the largest of model.ks: the
# searches trade one for another (on retailrocket-sessions the best trial by MRR@20 ranked lower on Recall@20 than the
# defaults, docs/tuning-log.md#a-guard-metric), and the table lets a user see it and pick another trial.
REPORTED_METRICS = ("recall", "mrr", "ndcg", "coverage")


def validation_metrics(metrics: dict[str, Any], ks: Sequence[int]) -> dict[str, float]:
    """A trial's validation metrics at the largest cutoff of `ks` (its network with its prior, kNN and bonus), by
    their logged names (val/recall@20, ...); those it did not log are left out."""
    k = max(ks)
    names = [f"val/{metric}@{k}" for metric in REPORTED_METRICS]
    return {name: float(metrics[name]) for name in names if name in metrics}


def guard_candidates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials the final run may retrain: those whose guard metric on the validation sessions is at least
    the first trial's; every completed one where the trials logged no guard or the first trial did not complete."""
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    floor = _guard_floor(study)
    if floor is None:
        return completed
    return [trial for trial in completed if trial.user_attrs.get(GUARD, -math.inf) >= floor]


def _guard_floor(study: optuna.Study) -> float | None:
    """The first trial's guard metric, which the chosen trial must reach; None without one (no guard, or the first
    trial did not complete)."""
    first = [trial for trial in study.trials if trial.number == 0 and trial.state == optuna.trial.TrialState.COMPLETE]
    return first[0].user_attrs.get(GUARD) if first else None


def write_report(
    study: optuna.Study,
    final: DictConfig,
    metrics: dict[str, Any],
    out: Path,
    best: optuna.trial.FrozenTrial | None = None,
    lines: dict[int, list[str]] | None = None,
) -> None:
    """trials.csv/.md, best.yaml and best_overrides.txt (the values of `best`, the chosen trial, as Hydra overrides;
    None: the study's best), plots, and each trial's override line of `lines` (trial number -> the line) as
    trial_NNN/final_overrides.txt where that trial's directory is."""
    best = study.best_trial if best is None else best
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    # Candidates first, best first: completed trials whose guard metric held (chosen_trial), then the other completed
    # ones; a pruned trial's value is its curve where it was stopped, which can lie above the best completed trial's
    # (a trial stopped by the budget), but it is no candidate for the final run.
    complete = frame["state"] == "COMPLETE"
    held = frame["number"].isin([trial.number for trial in guard_candidates(study)])
    frame = frame.assign(_held=held, _complete=complete)
    order = ["_held", "_complete", "value"]
    frame = frame.sort_values(order, ascending=False, na_position="last").drop(columns=["_held", "_complete"])
    reported = [column for column in frame.columns if column.startswith("user_attrs_val/")]  # beside the objective
    rest = [column for column in frame.columns if column not in reported]
    at = rest.index("value") + 1
    frame = frame[rest[:at] + reported + rest[at:]]
    frame.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(frame_to_markdown(frame.astype({"duration": str})) + "\n")
    overrides = _searched_overrides(best, final)
    body = OmegaConf.to_yaml(OmegaConf.from_dotlist(overrides))
    _, prior_header, prior_body = prior_overrides(best)
    _, blend_header, blend_body = blend_overrides(best, final)
    (out / "best_overrides.txt").write_text(" ".join(override_line(best, final)) + "\n")
    header = "defaults:\n" + prior_header + blend_header if prior_header or blend_header else ""
    (out / "best.yaml").write_text("# @package _global_\n" + header + prior_body + blend_body + body)
    chosen = {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
    write_json(chosen | metrics, out / "tune.json")
    write_environment(out)
    for number, line in (lines or {}).items():
        if (out / f"trial_{number:03d}").is_dir():
            (out / f"trial_{number:03d}" / "final_overrides.txt").write_text(" ".join(line) + "\n")
    _plots(study, out)


def override_line(trial: optuna.trial.FrozenTrial, final: DictConfig) -> list[str]:
    """`trial`'s Hydra overrides for scripts/train.py: its searched values, the epochs of `final` (the config its
    final run would train), and with prior=auto and blend=auto the trial's choices."""
    return [*_searched_overrides(trial, final), *prior_overrides(trial)[0], *blend_overrides(trial, final)[0]]


def _searched_overrides(trial: optuna.trial.FrozenTrial, final: DictConfig) -> list[str]:
    overrides = [f"{key}={value}" for key, value in trial.params.items()]
    return [*overrides, f"trainer.max_epochs={final.trainer.max_epochs}"]


def prior_overrides(best: optuna.trial.FrozenTrial) -> tuple[list[str], str, str]:
    """With prior=auto, the best trial's chosen prior that the final run used, as override-line entries, a defaults
    entry and the body of an experiment file; nothing otherwise (the prior the command line set stays as it was)."""
    chosen = best.user_attrs.get("prior")
    if chosen is None:
        return [], "", ""
    if chosen["weight"] <= 0:
        return ["~prior"], "  - override /prior: null\n", ""
    values = {"weight": chosen["weight"], "hours": chosen["hours"]}
    entries = ["prior=recent_popularity", *(f"prior.{key}={value}" for key, value in values.items())]
    return entries, "  - override /prior: recent_popularity\n", OmegaConf.to_yaml({"prior": values})


def blend_overrides(best: optuna.trial.FrozenTrial, final: DictConfig) -> tuple[list[str], str, str]:
    """With blend=auto, the best trial's kNN blend weight that the final run used (`final`'s fixed blend), as
    override-line entries, a defaults entry and the body of an experiment file; nothing otherwise."""
    chosen = best.user_attrs.get("blend")
    if chosen is None:
        return [], "", ""
    if not has_blend(chosen):
        return ["~blend"], "  - override /blend: null\n", ""
    values = OmegaConf.to_container(final.blend)
    entries = ["blend=vsknn", f"blend.weight={values['weight']}", f"blend.scale={values['scale']}"]
    # blend=vsknn's knn is {}: a plain `blend.knn.KEY=V` is refused there (not in struct); `++` adds or overrides it.
    entries += [f"++blend.knn.{key}={value}" for key, value in values["knn"].items()]
    if values.get("repeat") is not None:  # blend=auto's repeat bonus
        entries.append(f"blend.repeat={{shape:{values['repeat']['shape']},weight:{values['repeat']['weight']}}}")
    return entries, "  - override /blend: vsknn\n", OmegaConf.to_yaml({"blend": values})


def _plots(study: optuna.Study, out: Path) -> None:
    from optuna.visualization import matplotlib as plots  # matplotlib only when reporting

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    figures = {"optimization_history": plots.plot_optimization_history}
    figures["intermediate_values"] = plots.plot_intermediate_values
    if len(completed) > 1:
        figures["slice"] = plots.plot_slice
    for name, plot in figures.items():
        with quiet_optuna():
            axes = plot(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")
