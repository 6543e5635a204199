"""init_from=CKPT: start a training run from a checkpoint's weights on new data, with the item index grown.

Items the checkpoint knows keep their index and learned rows; the new data's other items are appended with
fresh rows; items missing from the new data stay (with a count of 0). The settings that shape the weights come
from the checkpoint. The schedule and the item prior start afresh, as in any new run; so does the optimizer unless
init_optimizer=carry, which continues the checkpoint's optimizer state (Adagrad's sums: the known rows keep their
step sizes, the new rows start as a fresh optimizer's).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from lstm_rec.checkpoint import item_index_of, load_checked
from lstm_rec.checkpoint_checks import DEFAULTS
from lstm_rec.jobs.config import CONF_DIR
from lstm_rec.jobs.runs import build_model
from lstm_rec.warm_start import load_known_items

if TYPE_CHECKING:
    from lstm_rec.data import SessionDataModule
    from lstm_rec.module import SessionRecModule

log = logging.getLogger(__name__)

# Network settings that shape the weights; dropout rates may change between runs.
FIXED = ("embedding_dim", "hidden", "num_layers", "cell", "tie_weights", "repeat_window", "members")
# The model group's own file: a fixed setting left at its value there is taken from the checkpoint.
MODEL_DEFAULTS = CONF_DIR / "model" / "lstm.yaml"


def model_from_checkpoint(cfg: DictConfig, datamodule: SessionDataModule) -> SessionRecModule:
    """Set up `datamodule` on the checkpoint's item index grown by its training data, and build the configured
    module with the checkpoint's weights (cfg.model's fixed settings taken from the checkpoint)."""
    path = cfg.init_from
    if cfg.get("ckpt_path") is not None:
        raise ValueError(
            f"init_from={path!r} and ckpt_path={cfg.ckpt_path!r} were both given: ckpt_path resumes an interrupted "
            "run with its optimizer on the same data, init_from starts a new run from a checkpoint's weights; give "
            "one of them"
        )
    checkpoint, entry = load_checked(path)
    take_fixed_settings(cfg, entry["network"], f"init_from '{path}'")
    known = item_index_of(entry)
    datamodule.known_items = known
    datamodule.setup("fit")
    index = datamodule.item_index
    vanished = int((index.counts[: len(known)] == 0).sum())
    log.info(
        "init_from '%s': %d items known (%d in the new training data, %d not there and kept), %d new items appended",
        path, len(known), len(known) - vanished, vanished, len(index) - len(known),
    )  # fmt: skip
    model = build_model(cfg, datamodule)
    weights = {name[4:]: value for name, value in checkpoint["state_dict"].items() if name.startswith("net.")}
    load_known_items(model.net, weights)
    carry = cfg.get("init_optimizer", "fresh")
    if carry not in ("fresh", "carry"):
        raise ValueError(
            f"init_optimizer={carry!r}: expected fresh (a new optimizer) or carry (the checkpoint's state)"
        )
    if carry == "carry":
        states = checkpoint.get("optimizer_states") or []
        if len(states) != 1:
            raise ValueError(f"init_optimizer=carry: init_from '{path}' holds {len(states)} optimizer states, not 1")
        model.carried_optimizer_state = states[0]
        log.info("init_from '%s': the optimizer continues from the checkpoint's state (init_optimizer=carry)", path)
    return model


def carry_optimizer_state(optimizer: torch.optim.Optimizer, old: dict[str, Any], source: str = "init_from") -> None:
    """Load a checkpoint's optimizer state into `optimizer`, whose parameters are the checkpoint's grown along the
    item dimension: each state tensor's old extent is the checkpoint's, the rows beyond it (new items) keep the
    fresh optimizer's values (zeros where it has none yet). The run's own settings (learning rate...) stay."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    old_ids = [i for group in old["param_groups"] for i in group["params"]]
    if len(old_ids) != len(params):
        raise ValueError(
            f"init_optimizer=carry: {source}'s optimizer has {len(old_ids)} parameters, this model {len(params)}"
        )
    new = optimizer.state_dict()
    # A learning-rate schedule adds its own key (initial_lr) to the groups: not the optimizer's kind.
    old_settings, new_settings = (set(state["param_groups"][0]) - {"params", "initial_lr"} for state in (old, new))
    if old_settings != new_settings:
        raise ValueError(
            f"init_optimizer=carry: {source}'s optimizer is not this run's {type(optimizer).__name__} (its settings "
            f"{sorted(old_settings)} against {sorted(new_settings)}); continue with the "
            "checkpoint's model/optimizer, or use init_optimizer=fresh"
        )
    new_ids = [i for group in new["param_groups"] for i in group["params"]]
    for old_id, new_id, param in zip(old_ids, new_ids, params, strict=True):
        if old_id not in old["state"]:
            continue
        fresh = new["state"].get(new_id, {})
        grown = {}
        for key, value in old["state"][old_id].items():
            if not (torch.is_tensor(value) and value.dim() > 0):
                grown[key] = value
                continue
            target = fresh[key].clone() if key in fresh else torch.zeros_like(param)
            if value.dim() != target.dim() or any(o > n for o, n in zip(value.shape, target.shape, strict=True)):
                raise ValueError(
                    f"init_optimizer=carry: {source}'s optimizer state {key!r} has shape {tuple(value.shape)}, "
                    f"which does not fit this model's parameter of shape {tuple(param.shape)}: not the same optimizer?"
                )
            target[tuple(slice(0, n) for n in value.shape)] = value.to(target)
            grown[key] = target
        new["state"][new_id] = grown
    optimizer.load_state_dict(new)


def take_fixed_settings(cfg: DictConfig, stored: dict[str, Any], source: str) -> None:
    """Set cfg.model's fixed settings to the checkpoint's; one set to a third value (on the command line, by a
    preset) is an error naming it."""
    stored = DEFAULTS | dict(stored)
    defaults = OmegaConf.load(MODEL_DEFAULTS) if MODEL_DEFAULTS.is_file() else OmegaConf.create()
    for key in FIXED:
        asked = _plain(cfg.model.get(key))
        if asked == _plain(stored[key]):
            continue
        if asked != _plain(defaults.get(key, DEFAULTS[key])):
            raise ValueError(
                f"model.{key}={asked!r} conflicts with {source}, whose network has {key}={stored[key]!r}: a "
                f"continued model keeps the settings that shape its weights ({', '.join(FIXED)}); drop the "
                f"override of model.{key} (or set it to the checkpoint's value), or train from scratch"
            )
        log.info("%s: model.%s=%r, the checkpoint's (the config had %r)", source, key, stored[key], asked)
        cfg.model[key] = stored[key]


def _plain(value: Any) -> Any:
    """A setting as plain Python values; an empty member list is one network, like null."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list):
        value = [dict(member or {}) for member in value] or None
    return value
