"""Settings derived from the data when the config says `auto`: the number of training epochs.

`trainer.max_epochs=auto` (the default) trains about `auto_epochs.targets` next-item predictions in all: a small log
gets many epochs, a large one few, so a default run's length grows slowly with the log. The count is clipped to
[`auto_epochs.low`, `auto_epochs.high`] and logged with the reason. Early stopping still ends a run sooner when the
monitored metric stalls.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"


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
