"""What every job run shares: threads and seeds, building the configured objects, finding a run again to resume
it, and checking that a run can write its outputs."""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lstm_rec.checkpoint import read_checkpoint
from lstm_rec.jobs.auto import resolve_batch_size, resolve_cell, resolve_epochs
from lstm_rec.jobs.prior_choice import is_search

if TYPE_CHECKING:
    import lightning as L

    from lstm_rec.data import SessionDataModule
    from lstm_rec.module import SessionRecModule

log = logging.getLogger(__name__)

SAVED_CONFIG = Path(".hydra") / "config.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Keys that tell runs apart without changing what they train.
NOT_COMPARED = ("ckpt_path", "paths.output_dir")
# What Hydra saves in a run's output_subdir (.hydra).
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class OutputDirError(OSError):
    """A run directory that cannot hold the run's outputs; the message says what to change."""


def prepare_run(cfg: DictConfig) -> None:
    """Threads and seeds before anything random happens."""
    import lightning as L

    from lstm_rec.threads import apply_threads

    apply_threads(cfg.get("num_threads"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every object of a config group of named entries; entries set to null are switched off."""
    if group is None:
        return []
    return [instantiate(node) for node in group.values() if node is not None]


def build_model(cfg: DictConfig, datamodule: SessionDataModule) -> SessionRecModule:
    """The configured module for the fitted data, with the item prior (cfg.prior) made from its training sessions."""
    check_monitor(cfg.monitor, cfg.model.ks)
    resolve_batch_size(cfg, datamodule)  # data.batch_size=auto, before the loaders and the schedule's length
    resolve_epochs(cfg, datamodule.train_sessions.n_targets)  # trainer.max_epochs=auto, before the schedule reads it
    resolve_cell(cfg, datamodule.train_sessions.n_targets)  # model.cell=auto
    prior = None
    if cfg.get("prior") is not None and not is_search(cfg.prior):  # prior=auto is chosen after training
        prior = instantiate(cfg.prior).fit(datamodule.train_sessions, datamodule.n_items)
    # val/loss in batches of the training's size (sampled losses share candidates within a batch).
    return instantiate(cfg.model, item_index=datamodule.item_index, prior=prior, loss_batch_size=datamodule.batch_size)


def checkpoint_epochs(checkpoint: str | Path | None) -> int | None:
    """The epochs that made `checkpoint`, from its own "epoch" record; None for no checkpoint (a run that saved none
    writes null to metrics.json; earlier versions wrote the string "None")."""
    if checkpoint is None or str(checkpoint) == "None":
        return None
    return int(read_checkpoint(checkpoint)["epoch"]) + 1


def logged_cutoff(metric: str, ks: list[int]) -> bool:
    """Whether `metric`'s cutoff (the k of NAME@k) is one of model.ks, so that runs log it."""
    k = str(metric).partition("@")[2]
    return k.isdigit() and int(k) in ks


def check_monitor(monitor: str, ks: list[int]) -> None:
    """The monitored metric must be one that is logged: its k one of model.ks."""
    if not logged_cutoff(monitor, ks):
        raise ValueError(
            f"monitor={monitor!r} is not logged: its cutoff must be one of model.ks={list(ks)} (e.g. "
            f"monitor=val/mrr@{max(ks)}); add the cutoff to model.ks or monitor another one"
        )


def find_run_to_resume(search_dir: Path, config: dict[str, Any], own_dir: Path | None = None) -> Path:
    """`own_dir` when it already holds a last.ckpt (a directory chosen with hydra.run.dir=DIR, run again); else the
    newest run under `search_dir` saved with this `config` (Hydra's .hydra/config.yaml) and a last.ckpt.

    Runs are compared by their unresolved config, ignoring the keys in NOT_COMPARED, so the same
    command line plus ``ckpt_path=last`` finds the run it started before.
    """
    if own_dir is not None and (own_dir / LAST_CHECKPOINT).is_file():
        log.info("ckpt_path=last: resuming the run in this run's own directory %s", own_dir)
        return own_dir
    wanted = _comparable(config)
    candidates = []
    for saved in Path(search_dir).glob(f"**/{SAVED_CONFIG}"):
        run_dir = saved.parent.parent
        if (run_dir / LAST_CHECKPOINT).is_file() and _comparable(_load(saved)) == wanted:
            candidates.append(run_dir)
    if not candidates:
        own = "" if own_dir is None else f"this run's directory '{own_dir}' has no {LAST_CHECKPOINT}, and "
        raise FileNotFoundError(
            f"ckpt_path=last: {own}no run under '{search_dir}' has this configuration and a {LAST_CHECKPOINT}; "
            "resume with the same overrides (and paths.log_dir or hydra.run.dir) as the interrupted run, or give "
            "ckpt_path=PATH"
        )
    run_dir = max(candidates, key=lambda d: (d / LAST_CHECKPOINT).stat().st_mtime)
    log.info("ckpt_path=last: resuming the run in %s (%d matching runs found)", run_dir, len(candidates))
    return run_dir


def continue_in(run_dir: Path, made_dir: Path, hydra_subdir: str | None) -> None:
    """Continue this invocation in `run_dir`: its log files there, appended, and `made_dir` (the directory Hydra
    made for it) removed when it holds nothing but Hydra's saved config (in `hydra_subdir`) and those logs."""
    if not made_dir.is_dir() or made_dir.resolve() == run_dir.resolve():
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename).resolve().parent == made_dir.resolve()
        ):
            root.removeHandler(handler)
            root.addHandler(_moved_file_handler(handler, run_dir))
    if hydra_subdir:
        saved = made_dir / hydra_subdir
        for name in HYDRA_FILES:
            (saved / name).unlink(missing_ok=True)
        if saved.is_dir() and not any(saved.iterdir()):
            saved.rmdir()
    if any(made_dir.iterdir()):
        log.warning("ckpt_path=last: keeping %s, which holds more than Hydra's files", made_dir)
    else:
        made_dir.rmdir()


def _moved_file_handler(handler: logging.FileHandler, run_dir: Path) -> logging.FileHandler:
    """A handler like `handler` that appends to the file of its name in `run_dir`, after what it wrote so far."""
    handler.close()
    written = Path(handler.baseFilename)
    with open(run_dir / written.name, "ab") as target:
        target.write(written.read_bytes())
    written.unlink()
    moved = logging.FileHandler(run_dir / written.name, mode="a", encoding=handler.encoding)
    moved.setFormatter(handler.formatter)
    moved.setLevel(handler.level)
    for log_filter in handler.filters:
        moved.addFilter(log_filter)
    return moved


def _load(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for key in NOT_COMPARED:
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return config


def check_writable(directory: str | Path, needed_bytes: int, role: str) -> None:
    """Fail before training when `directory` cannot be created and written, or its disk lacks `needed_bytes`."""
    directory = Path(directory)
    hint = f"point {role} at a writable directory (for a whole run: paths.log_dir=DIR or hydra.run.dir=DIR)"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OutputDirError(f"{role}: cannot write to '{directory}' ({error}); {hint}") from error
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OutputDirError(
            f"{role}: only {free / 2**20:.0f} MiB free on the disk of '{directory}', but this run's checkpoints "
            f"need about {needed_bytes / 2**20:.0f} MiB; free some space or {hint}"
        )


def check_outputs(trainer: L.Trainer, output_dir: str | Path, needed_bytes: int) -> None:
    """Before training: the run directory and every checkpoint directory can be written and have room for the
    checkpoints, and checkpoints are read weights-only (lstm_rec.callbacks.AtomicCheckpointIO)."""
    from lstm_rec.callbacks import AtomicCheckpointIO

    if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
        raise ValueError(
            f"trainer.plugins: the trainer reads checkpoints with {type(trainer.strategy.checkpoint_io).__name__}; "
            "keep lstm_rec.callbacks.AtomicCheckpointIO there (conf/trainer/default.yaml), which never runs code "
            "from a checkpoint and writes them atomically"
        )
    check_writable(output_dir, needed_bytes, "paths.output_dir")
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is not None:
            check_writable(callback.dirpath, needed_bytes, "callbacks.model_checkpoint.dirpath")


def checkpoint_bytes(model: SessionRecModule, files: int = 3) -> int:
    """Disk a run's checkpoints may take: weights plus up to two optimizer states each, for `files` files."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return files * 3 * parameter_bytes + 2**20
