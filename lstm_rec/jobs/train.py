"""The training job: fit, test the chosen checkpoint, compare with popularity, write metrics.json."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from lstm_rec.baselines import Popularity
from lstm_rec.data import ItemIndex, SessionDataModule
from lstm_rec.data.sessions import SESSION
from lstm_rec.evaluation import evaluate
from lstm_rec.jobs.auto import TOP_UP, epoch_budget, resolve_refit
from lstm_rec.jobs.environment import write_environment
from lstm_rec.jobs.init_from import model_from_checkpoint
from lstm_rec.jobs.prior_choice import apply_blend, apply_prior, choose_blend, choose_prior, has_blend
from lstm_rec.jobs.report import flatten, write_json
from lstm_rec.jobs.runs import (
    LAST_CHECKPOINT,
    build_model,
    check_outputs,
    checkpoint_bytes,
    checkpoint_epochs,
    continue_in,
    find_run_to_resume,
    instantiate_all,
    prepare_run,
)
from lstm_rec.module import SessionRecModule

log = logging.getLogger(__name__)

HPARAM_GROUPS = ("data", "model", "prior", "blend", "trainer", "seed")


def train(cfg: DictConfig, callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train the LSTM as configured; returns every final metric (also written to metrics.json).

    `callbacks` join the configured ones (the tuning job's pruning). Under a distributed strategy every process
    runs this; the test metrics are summed over all of them, and only the first process evaluates the rest and
    writes metrics.json. With a refit (`refit`, lstm_rec.jobs.auto.resolve_refit) a second, fresh network trains on
    all of data.train for the epochs the first one's validation chose, in the run's refit/ directory, and the test
    metrics are its own (the first network's as selected/test/... with test_selected=true).
    """
    start = time.perf_counter()
    resume = cfg.get("init_from") is None
    trainer, model, datamodule, ckpt_path = _fit(cfg, callbacks, resume=resume)
    fit_seconds = model.train_seconds  # every epoch of this fit (testing a checkpoint loads its own count)

    test_ckpt = _checkpoint_to_test(trainer, cfg.test_ckpt)
    prior = choose_prior(cfg, trainer, model, datamodule, test_ckpt)  # prior=auto, before the test
    blend = choose_blend(cfg, trainer, model, datamodule, test_ckpt)  # blend=..., with the prior chosen
    refit = cfg.get("refit")  # resolved by _fit: True, TOP_UP or False
    top_up = refit == TOP_UP and test_ckpt is not None  # a top-up continues the saved checkpoint
    if refit == TOP_UP and not top_up:
        log.warning("top up: skipped, the run saved no checkpoint to continue; the tested network is the run's model")
    # A refit, or a top-up, is the model tested: this network's test is extra.
    replaced = refit is True or top_up
    metrics: dict[str, Any] = {}
    if not replaced or cfg.get("test_selected", False):
        metrics = trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)[0]
    if not trainer.is_global_zero:
        return metrics
    # A refit tests (and ranks popularity on) its own data; a top-up keeps this network's popularity figures.
    metrics |= _validation_and_popularity(model, datamodule, test=refit is not True)
    if datamodule.valid_sessions is not None:  # a run with nothing held out (unvalidated) has none
        with trainer.precision_plugin.forward_context():  # the training's precision, as in the per-epoch val/loss
            metrics["val/loss"] = model.validation_loss(datamodule.full_dataloader("valid"))
    metrics |= {
        "epochs": trainer.current_epoch,
        "max_epochs": trainer.max_epochs,  # the number trainer.max_epochs=auto chose, or the one given
        "train_seconds": model.train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "checkpoint": test_ckpt,  # None: none saved, the final weights were tested
        "resumed_from": ckpt_path,
        "init_from": cfg.get("init_from"),
        "skipped_batches": model.skipped_batches,
        "output_dir": cfg.paths.output_dir,
    }
    if prior is not None:  # prior=auto's choice: the recent-popularity prior's weight (0: none) and hours
        metrics |= {"prior_weight": prior["weight"], "prior_hours": prior["hours"]}
    if blend is not None:  # the kNN blend's weight (0: none) and its V-SKNN settings (over the blend's defaults)
        metrics |= {"blend_weight": blend["weight"], "blend_knn": dict(blend["knn"])}
        metrics["blend_repeat"] = blend.get("repeat")  # the repeat bonus ({shape, weight}; None: none)
    if refit is True:
        metrics = _refit(cfg, metrics, _epochs_of(trainer, test_ckpt), fit_seconds, prior, blend)
        metrics["wall_seconds"] = time.perf_counter() - start
    elif top_up:
        metrics = _top_up(cfg, metrics, datamodule, fit_seconds, prior, blend)
        metrics["wall_seconds"] = time.perf_counter() - start

    write_json(metrics, Path(cfg.paths.output_dir) / "metrics.json")
    write_environment(cfg.paths.output_dir)  # the packages and machine behind the figures
    _log_hparams_with_metrics(trainer, cfg, metrics)
    return metrics


def _fit(
    cfg: DictConfig,
    callbacks: Sequence[L.Callback],
    resume: bool,
    frames: tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None] | None = None,
    counted_by: ItemIndex | None = None,
) -> tuple[L.Trainer, SessionRecModule, SessionDataModule, str | None]:
    """Seeds, data, model (from init_from or built), trainer; fits; `resume`: honour ckpt_path; `frames`: the
    (train, valid, test) events already read, in place of cfg.data's; `counted_by`: the items whose counts the model's
    item index takes (its checkpoints' counts, the test's popularity bias), in place of its training data's (which
    still draw the negatives)."""
    prepare_run(cfg)
    budget = epoch_budget(cfg)  # trainer.max_epochs=auto within auto_epochs.minutes: read before the epochs resolve
    if not (resume and cfg.get("ckpt_path")):  # a new run, before its data is read
        _check_no_earlier_run(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.preloaded = frames
    if cfg.get("init_from") is not None:  # a checkpoint's weights on new data (lstm_rec.jobs.init_from)
        ckpt_path, model = None, model_from_checkpoint(cfg, datamodule)
    else:
        ckpt_path = _checkpoint_to_resume(cfg) if resume else None
        datamodule.setup("fit")
        model = build_model(cfg, datamodule)
    if counted_by is not None:
        model.item_index = model.item_index.recounted(counted_by)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[*instantiate_all(cfg.get("callbacks")), *callbacks, *budget],
        logger=instantiate_all(cfg.get("logger")),
    )
    resolve_refit(cfg, datamodule, trainer.world_size)  # before training: refit=true that cannot be is an error
    check_outputs(trainer, cfg.paths.output_dir, checkpoint_bytes(model))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if budget and trainer.max_epochs != cfg.trainer.max_epochs:  # fewer epochs within the time budget
        with open_dict(cfg):
            cfg.trainer.max_epochs = trainer.max_epochs
    return trainer, model, datamodule, ckpt_path


def _epochs_of(trainer: L.Trainer, checkpoint: str | None) -> int:
    """The epochs that made `checkpoint` (its own record), or all the fit's epochs when none was saved."""
    epochs = checkpoint_epochs(checkpoint)
    return trainer.current_epoch if epochs is None else epochs


def _refit(
    cfg: DictConfig,
    selected: dict[str, Any],
    epochs: int,
    fit_seconds: float,
    prior: dict[str, Any] | None = None,
    blend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh network, the same config and seed, on all of data.train (the validation sessions too) for `epochs`,
    in <run>/refit/, tested on its last epoch; with `prior` (prior=auto's choice) and `blend` (the kNN blend's) the
    chosen prior and blend are made from all of data.train. Returns the metrics: the refit's test metrics and
    checkpoint; the selected network's validation metrics, and its test metrics as selected/test/... (test_selected)."""
    out = Path(cfg.paths.output_dir) / "refit"
    log.info("refit: training a fresh network on all of data.train for %d epochs in %s", epochs, out)
    trainer, model, datamodule, checkpoint = _second_fit(cfg, "refit", epochs, {})
    if prior is not None and prior["weight"] > 0:
        apply_prior(prior, model, datamodule.train_sessions, datamodule.n_items, checkpoint)
    if has_blend(blend):
        apply_blend(blend, model, datamodule.train_sessions, datamodule.n_items, checkpoint)
    tested = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint)[0]
    tested |= _popularity(datamodule, "test", model.ks)
    # The train seconds are both fits': the refit needs the first one's epochs.
    return _after_selected(selected, tested | {"refit_epochs": epochs}, model, checkpoint, fit_seconds, "refit")


def _top_up(
    cfg: DictConfig,
    selected: dict[str, Any],
    datamodule: SessionDataModule,
    fit_seconds: float,
    prior: dict[str, Any] | None = None,
    blend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The selected network trained `auto_refit.top_up_epochs` more epochs on the validation sessions alone (split off
    data.train, so far unseen in training), its optimizer's state carried (init_from with init_optimizer=carry: the
    rows it has learned take small steps, the items only those sessions hold learn at full speed), in <run>/top_up/,
    tested on its last epoch on the selected network's test sessions. Returns the metrics: the top-up's test metrics
    and checkpoint; the selected network's validation and popularity metrics, and its test metrics as selected/test/...
    (test_selected). With `prior` (prior=auto's choice) and `blend` (the kNN blend's) the chosen prior and blend are
    made from all of data.train. `selected["checkpoint"]` is the checkpoint it continues."""
    settings = cfg.get("auto_refit") or {}
    epochs = int(settings.get("top_up_epochs", 3))
    changes: dict[str, Any] = {"init_from": selected["checkpoint"], "init_optimizer": "carry"}
    scheduler = cfg.model.get("scheduler")
    if scheduler is not None and "warmup_steps" in scheduler:  # a few hundred steps: a short warm-up
        changes["model.scheduler.warmup_steps"] = min(
            int(scheduler.warmup_steps), int(settings.get("top_up_warmup_steps", 20))
        )
    held, all_items = datamodule.carved
    log.info(
        "top up: training the selected network %d more epochs on the %d validation sessions in %s",
        epochs, held[SESSION].nunique(), Path(cfg.paths.output_dir) / "top_up",
    )  # fmt: skip
    # It draws its negatives by the validation sessions' clicks (as measured); its checkpoint counts every click of
    # data.train, as a refit's does (serving's popularity, a later init_from's known counts).
    trainer, model, top_data, checkpoint = _second_fit(
        cfg, "top_up", epochs, changes, frames=(held, None, None), counted_by=all_items
    )
    # Its items are all of data.train's in the order of the selected network's test catalog: the same test sessions.
    if not np.array_equal(top_data.item_index.ids, all_items.ids):
        raise RuntimeError("top up: the grown item index does not match data.train's items; please report this")
    top_data.test_sessions = datamodule.test_sessions
    if prior is not None and prior["weight"] > 0:  # the training part's items lead the grown index, numbered alike
        sessions = [datamodule.train_sessions, top_data.train_sessions]
        apply_prior(prior, model, sessions, top_data.n_items, checkpoint)
    if has_blend(blend):  # the training part's sessions, then the validation sessions
        apply_blend(blend, model, [datamodule.train_sessions, top_data.train_sessions], top_data.n_items, checkpoint)
    tested = trainer.test(model, datamodule=top_data, ckpt_path=checkpoint)[0]
    return _after_selected(selected, tested | {"top_up_epochs": epochs}, model, checkpoint, fit_seconds, "top_up")


def _second_fit(
    cfg: DictConfig, name: str, epochs: int, changes: dict[str, Any], **fit_args: Any
) -> tuple[L.Trainer, SessionRecModule, SessionDataModule, str | None]:
    """A second training run after the selected network's (a refit, a top-up), in <run>/<name>/: `epochs` epochs,
    nothing held out or validated, its latest epoch kept; `changes` are further config keys, `fit_args` go to _fit.
    Returns its trainer, model, data and last checkpoint."""
    settings = {
        "paths.output_dir": str(Path(cfg.paths.output_dir) / name),
        "trainer.max_epochs": epochs,
        "ckpt_path": None,
        "refit": False,
        **changes,
    }
    second = unvalidated(cfg, settings)
    _clear_earlier_refit(second)
    trainer, model, datamodule, _ = _fit(second, (), resume=False, **fit_args)
    return trainer, model, datamodule, _checkpoint_to_test(trainer, "last")


def unvalidated(cfg: DictConfig, changes: dict[str, Any]) -> DictConfig:
    """`cfg` with `changes`, for a run that trains on all of its data.train for a fixed number of epochs: nothing held
    out or validated (no data.valid, no validation split, no early stopping), the latest epoch kept."""
    run = copy.deepcopy(cfg)
    settings = {"data.valid_fraction": 0.0, "callbacks.early_stopping": None, **changes}
    with open_dict(run):
        for key, value in settings.items():
            OmegaConf.update(run, key, value, merge=False)
        if run.data.get("valid") is not None:
            run.data.valid = None
        run.trainer.limit_val_batches = 0  # nothing held out: no validation
        if (run.get("callbacks") or {}).get("model_checkpoint") is not None:
            run.callbacks.model_checkpoint.monitor = None  # keeps the latest epoch
    return run


def _after_selected(
    selected: dict[str, Any],
    tested: dict[str, Any],
    model: SessionRecModule,
    checkpoint: str | None,
    fit_seconds: float,
    name: str,
) -> dict[str, Any]:
    """The metrics of a run whose second fit `name` (refit, top_up) is its model: the second fit's test metrics and
    checkpoint, the selected network's other metrics, its test metrics (if any) as selected/test/..., and both fits'
    seconds."""
    kept = {k: v for k, v in selected.items() if not k.startswith("test/")}
    kept |= {f"selected/{k}": v for k, v in selected.items() if k.startswith("test/")}
    kept |= {"selected_checkpoint": selected["checkpoint"], "selected_train_seconds": selected["train_seconds"]}
    seconds = {f"{name}_train_seconds": model.train_seconds, "train_seconds": fit_seconds + model.train_seconds}
    return kept | tested | seconds | {"checkpoint": checkpoint}


def _earlier_checkpoints(cfg: DictConfig) -> tuple[Path, list[Path]]:
    """Where a run's checkpoints go and those already there, sorted: the configured checkpoint directory, or without
    one (Lightning's own checkpointing then saves under the logger's directory or trainer.default_root_dir, both in
    the run directory) every checkpoint under the run directory."""
    callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if callback is not None and callback.get("dirpath") is not None:
        directory = Path(callback.dirpath)
        return directory, sorted(directory.glob("*.ckpt"))
    directory = Path(cfg.paths.output_dir)
    return directory, sorted(directory.rglob("*.ckpt"))


def _check_no_earlier_run(cfg: DictConfig) -> None:
    """A new run (no ckpt_path) refuses a checkpoint directory that holds an earlier run's checkpoints: Lightning would
    write epoch_NNN-v1.ckpt and last-v1.ckpt beside them, and the stale last.ckpt would then pass for this run's."""
    directory, earlier = _earlier_checkpoints(cfg)
    if earlier:
        names = [str(path.relative_to(directory)) for path in earlier]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise FileExistsError(
            f"{directory} already holds the checkpoints of an earlier run ({shown}): resume that run with "
            "ckpt_path=last, train this one elsewhere (hydra.run.dir=DIR), or remove them first"
        )


def _clear_earlier_refit(refit_cfg: DictConfig) -> None:
    """Remove the checkpoints an earlier refit of this run left (a run resumed, or run again in its directory): the
    refit starts from scratch, and its last.ckpt must be this refit's, not a leftover beside a last-v1.ckpt."""
    directory, earlier = _earlier_checkpoints(refit_cfg)
    if earlier:
        log.warning("refit: removing %d checkpoint(s) of an earlier refit in %s", len(earlier), directory)
        for path in earlier:
            path.unlink()


def _validation_and_popularity(
    model: SessionRecModule, datamodule: SessionDataModule, test: bool = True
) -> dict[str, float]:
    """The tested checkpoint's validation metrics, and popularity's on validation (and on test with `test`), in this
    process alone; none on validation for a run without validation sessions."""
    metrics: dict[str, float] = {}
    if datamodule.valid_sessions is not None:
        valid = datamodule.full_dataloader("valid")
        counts = datamodule.item_index.counts
        metrics |= evaluate(model.scorer(), valid, model.ks, "val/", model.device, item_counts=counts)
        metrics |= _popularity(datamodule, "valid", model.ks)
    return metrics | (_popularity(datamodule, "test", model.ks) if test else {})


def _popularity(datamodule: SessionDataModule, split: str, ks: Sequence[int]) -> dict[str, float]:
    """Popularity (the training clicks) ranked on the "valid" or "test" split, as pop/val/... or pop/test/..."""
    counts, name = datamodule.item_index.counts, {"valid": "val", "test": "test"}[split]
    scorer, item_counts = Popularity(counts), counts
    if split == "test" and datamodule.test_catalog is not None:  # coverage over the catalog, as for the network
        scorer, item_counts = datamodule.test_scorer(scorer), datamodule.test_catalog.counts
    return evaluate(scorer, datamodule.full_dataloader(split), ks, f"pop/{name}/", item_counts=item_counts)


def _checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """`ckpt_path`; "last" resumes this run's own directory when it holds a last checkpoint (hydra.run.dir=DIR run
    again), else this configuration's latest run under paths.log_dir, in whose directory the outputs continue."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    own_dir = Path(cfg.paths.output_dir)
    run_dir = find_run_to_resume(Path(cfg.paths.log_dir) / cfg.task_name, OmegaConf.to_container(cfg), own_dir)
    if HydraConfig.initialized():  # leave no stray directory from this invocation behind
        hydra = HydraConfig.get()
        continue_in(run_dir, Path(hydra.runtime.output_dir), hydra.output_subdir)
    cfg.paths.output_dir = str(run_dir)
    return str(run_dir / LAST_CHECKPOINT)


def _checkpoint_to_test(trainer: L.Trainer, which: str) -> str | None:
    """Path of the "best" or "last" checkpoint; None (the weights in memory) when none was saved."""
    if which not in ("best", "last"):
        raise ValueError(f"test_ckpt must be 'best' or 'last', got {which!r}")
    callback = trainer.checkpoint_callback
    path = None if callback is None else (callback.best_model_path if which == "best" else callback.last_model_path)
    if not path:
        log.warning("no %s checkpoint was saved; testing the weights at the end of training", which)
    return path or None


def _log_hparams_with_metrics(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Hyperparameters with final metrics, for TensorBoard's HPARAMS tab (as final/<metric>)."""
    params = _hparams(cfg)
    finals = {f"final/{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=finals)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(finals, step=trainer.global_step)
        logger.save()


def _hparams(cfg: DictConfig) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return flatten({group: resolved[group] for group in HPARAM_GROUPS if group in resolved})
