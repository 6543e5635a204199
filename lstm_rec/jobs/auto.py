"""Settings derived from the data when the config says `auto`: the number of training epochs, the batch size and
the recurrent cell.

`trainer.max_epochs=auto` (the default) trains about `auto_epochs.targets` next-item predictions in all: a small log
gets many epochs, a large one few, so a default run's length grows slowly with the log. The count is clipped to
[`auto_epochs.low`, `auto_epochs.high`] and logged with the reason. With `auto_epochs.minutes` set, a machine too slow
to train them in that time trains fewer (`epoch_budget`, lstm_rec.callbacks.EpochBudget, timed on the first batches).
Early stopping still ends a run sooner when the monitored metric stalls.

`data.batch_size=auto` (the default) takes `auto_batch_size.small` sessions per batch (lanes of session-parallel
steps), or `auto_batch_size.large` on a log with at least `auto_batch_size.large_from` training predictions an epoch:
the small steps score best up to retailrocket-sessions' size (docs/tuning-log.md, "Faster steps"), and on a log whose
few epochs are still many steps, wider ones cost fewer seconds per prediction and keep the run affordable.

`model.cell=auto` (the default) takes the `auto_cell.small` cell (an LSTM), or `auto_cell.large` (a GRU) on a log with
at least `auto_cell.large_from` training predictions an epoch that trains on session-parallel steps: with the few
epochs a large log gets, the GRU learned more, while with the many epochs of a small log the LSTM did
(docs/tuning-log.md, "The cell"). Window batches (`data.batching=windows`) always take the small log's cell.

`refit=auto` (the default) trains a second, fresh network on all of `data.train` once the first one's validation has
chosen its epochs, when that validation was split off `data.train` and withheld at least `auto_refit.min_share` of its
next-item predictions: those are its newest sessions, and on a small log they are worth the second run
(docs/tuning-log.md, "Refit on all the training data"). When they withheld less, `auto` tops up instead: the chosen
network trains `auto_refit.top_up_epochs` more epochs on the withheld sessions alone, its optimizer's state carried
(init_optimizer=carry), which costs seconds and learns their items too. The built-in synthetic sessions, drawn from
one unchanging process, are neither refitted nor topped up by `auto`.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"
TOP_UP = "top_up"


def auto_epochs(n_targets: int, targets: int, low: int, high: int) -> int:
    """Epochs that train about `targets` predictions on a log of `n_targets` per epoch, clipped to [low, high]."""
    if n_targets <= 0:
        raise ValueError(f"the training sessions hold no next-item predictions (n_targets={n_targets})")
    if not 1 <= low <= high:
        raise ValueError(f"auto_epochs needs 1 <= low <= high, got low={low}, high={high}")
    return int(min(max(round(targets / n_targets), low), high))


def resolve_epochs(cfg: DictConfig, n_targets: int) -> None:
    """Replace `trainer.max_epochs=auto` in `cfg` by the epochs derived from the training data's `n_targets`."""
    epochs: Any = cfg.trainer.get("max_epochs")
    if epochs != AUTO:
        if not isinstance(epochs, int) or isinstance(epochs, bool) or (epochs < 1 and epochs != -1):
            raise ValueError(f"trainer.max_epochs must be a positive integer, -1 (no limit) or auto, got {epochs!r}")
        return
    settings = cfg.get("auto_epochs")
    if settings is None:
        raise ValueError("trainer.max_epochs=auto needs the auto_epochs settings (targets, low, high) of train.yaml")
    chosen = auto_epochs(n_targets, int(settings.targets), int(settings.low), int(settings.high))
    reason = "the lower bound" if chosen == settings.low else "the upper bound" if chosen == settings.high else None
    log.info(
        "trainer.max_epochs=auto: %d epochs (%s training predictions an epoch, about %s in all%s)",
        chosen,
        f"{n_targets:,}",
        f"{int(settings.targets):,}",
        f"; {reason} of auto_epochs" if reason else "",
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = chosen


def epoch_budget(cfg: DictConfig) -> list[Any]:
    """The callback that keeps trainer.max_epochs=auto's training steps within `auto_epochs.minutes` on a slow machine
    (lstm_rec.callbacks.EpochBudget): one for an `auto` count with minutes set, else none. Read before the count
    resolves."""
    settings = cfg.get("auto_epochs")
    if cfg.trainer.get("max_epochs") != AUTO or settings is None or settings.get("minutes") is None:
        return []
    from lstm_rec.callbacks import EpochBudget

    return [EpochBudget(float(settings.minutes), int(settings.low))]


def auto_batch_size(n_targets: int, small: int, large: int, large_from: int) -> int:
    """`large` on a log of at least `large_from` predictions an epoch, else `small`."""
    if not 1 <= small <= large:
        raise ValueError(f"auto_batch_size needs 1 <= small <= large, got small={small}, large={large}")
    return large if n_targets >= large_from else small


def resolve_batch_size(cfg: DictConfig, datamodule: Any) -> None:
    """Replace `data.batch_size=auto` in `cfg` and on `datamodule` by the size for the training data's predictions."""
    size: Any = datamodule.batch_size
    if size != AUTO:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"data.batch_size must be a positive integer or auto, got {size!r}")
        return
    settings = cfg.get("auto_batch_size")
    if settings is None:
        raise ValueError(
            "data.batch_size=auto needs the auto_batch_size settings (small, large, large_from) of train.yaml"
        )
    n_targets = datamodule.train_sessions.n_targets
    small, large, large_from = int(settings.small), int(settings.large), int(settings.large_from)
    chosen = auto_batch_size(n_targets, small, large, large_from)
    wide = n_targets >= large_from
    log.info(
        "data.batch_size=auto: %d (%s training predictions an epoch, %s %s: %s)",
        chosen,
        f"{n_targets:,}",
        "at least" if wide else "fewer than",
        f"{large_from:,}",
        "wider steps keep a very large log's run affordable" if wide else "small steps score best",
    )
    datamodule.batch_size = chosen
    with open_dict(cfg):
        cfg.data.batch_size = chosen


def resolve_cell(cfg: DictConfig, n_targets: int) -> None:
    """Replace `model.cell=auto` in `cfg` by the cell for a log of `n_targets` training predictions an epoch."""
    from lstm_rec.model import CELLS  # torch, only when a run builds its model

    cell: Any = cfg.model.get("cell")
    if cell != AUTO:
        if cell not in CELLS:
            raise ValueError(f"model.cell must be one of {[*CELLS, AUTO]}, got {cell!r}")
        return
    settings = cfg.get("auto_cell")
    if settings is None:
        raise ValueError("model.cell=auto needs the auto_cell settings (small, large, large_from) of train.yaml")
    small, large, large_from = str(settings.small), str(settings.large), int(settings.large_from)
    for name, value in (("small", small), ("large", large)):
        if value not in CELLS:
            raise ValueError(f"auto_cell.{name} must be one of {list(CELLS)}, got {value!r}")
    if cfg.data.get("batching") == "windows":
        chosen, why = small, "data.batching=windows"
    elif n_targets >= large_from:
        chosen, why = large, f"{n_targets:,} training predictions an epoch, at least {large_from:,}: a large log"
    else:
        chosen, why = small, f"{n_targets:,} training predictions an epoch, fewer than {large_from:,}: a small log"
    log.info("model.cell=auto: %s (%s)", chosen, why)
    with open_dict(cfg):
        cfg.model.cell = chosen


def resolve_refit(cfg: DictConfig, datamodule: Any, world_size: int = 1) -> bool | str:
    """What this run does with the validation sessions once they have chosen the network (`refit`: auto, true,
    top_up or false): True refits a fresh network on all of data.train, TOP_UP trains the chosen one on them for
    a few more epochs, False neither. Replaces `refit=auto` in `cfg` with the choice.

    Both need validation sessions split off the training data (no `data.valid`) and one process. `refit=true` or
    `top_up` without them is an error before training; `auto` then logs that it does neither.
    """
    refit: Any = cfg.get("refit", False)
    if refit not in (AUTO, True, False, TOP_UP):
        raise ValueError(f"refit must be auto, true, top_up or false, got {refit!r}")
    if refit is False:
        return False
    forced = "refit=true trains again on all of data.train" if refit is True else "refit=top_up trains further"
    if not datamodule.valid_carved:
        why = (
            "its validation sessions come from data.valid, not from data.train"
            if datamodule.valid_sessions is not None
            else "it has no validation sessions to choose the epochs with"
        )
        if refit != AUTO:
            raise ValueError(
                f"{forced} on the validation sessions split off data.train, but {why}: leave data.valid unset "
                "(data.valid_fraction > 0) to refit, or set refit=false"
            )
        return _chosen(cfg, False, why)
    if world_size > 1:
        if refit != AUTO:
            name = "true" if refit is True else refit
            raise ValueError(f"refit={name} runs in one process; this trainer has {world_size}: set refit=false")
        return _chosen(cfg, False, f"{world_size} processes; a refit runs in one")
    share = datamodule.valid_share
    held = f"the validation split withheld {share:.1%} of data.train's next-item predictions"
    if refit != AUTO:
        return _chosen(cfg, refit, f"refit={'true' if refit is True else refit}; {held}")
    if getattr(datamodule, "stationary", False):
        why = f"{held}, but the data is drawn from one unchanging process: its newest hold nothing new"
        return _chosen(cfg, False, why)
    settings = cfg.get("auto_refit")
    if settings is None:
        raise ValueError("refit=auto needs the auto_refit settings (min_share) of train.yaml")
    min_share = float(settings.min_share)
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"auto_refit.min_share must be a share in [0, 1], got {min_share}")
    enough = share >= min_share
    why = f"{held}, {'at least' if enough else 'less than'} auto_refit.min_share={min_share:.0%}"
    return _chosen(cfg, True if enough else TOP_UP, why)


def _chosen(cfg: DictConfig, refit: bool | str, why: str) -> bool | str:
    what = {True: "a second network on all of data.train", False: "no"}.get(
        refit, "top up: the chosen network trains further on the validation sessions"
    )
    log.info("refit: %s (%s)", what, why)
    with open_dict(cfg):
        cfg.refit = refit
    return refit
