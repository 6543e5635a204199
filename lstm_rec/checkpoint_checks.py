"""Checks that a loaded checkpoint is one lstm_rec can use, before anything is built from it.

Every malformed file gets a CheckpointError naming it and what is wrong, and no value in it can make loading
allocate more than the file itself stores: the network's settings are checked against the stored weights' shapes
(computed from the settings, without building anything), and a tensor may not claim more elements than it stores.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lstm_rec.model import CELLS, MEMBER_SETTINGS, RECURRENT_INITS, SessionLSTM

WRITTEN_BY = "expected a .ckpt file written by scripts/train.py"
DEFAULTS = {
    name: p.default for name, p in inspect.signature(SessionLSTM).parameters.items() if name not in ("self", "n_items")
}

# What write_entry stores numeric item ids as (torch.from_numpy of an integer or float array); the wider unsigned
# types need torch >= 2.3.
ID_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
ID_DTYPES = {getattr(torch, name) for name in ID_TYPES if hasattr(torch, name)}


class CheckpointError(ValueError):
    """A file that is not a usable lstm_rec checkpoint."""


def check_tensors(checkpoint: Any, source: str) -> None:
    """Every tensor in `checkpoint` stores all its elements: a view with zero strides claims any shape from a few
    bytes, and copying it (stacking, loading it into a network) would allocate that shape."""
    pending: list[tuple[str, Any]] = [("", checkpoint)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, Mapping):
            pending.extend((f"{path}/{key}".lstrip("/"), item) for key, item in value.items())
        elif isinstance(value, list | tuple):
            pending.extend((f"{path}/{i}".lstrip("/"), item) for i, item in enumerate(value))
        elif isinstance(value, Tensor):
            stored = value.untyped_storage().nbytes() // max(value.element_size(), 1)
            if value.layout != torch.strided or value.numel() > stored:
                raise CheckpointError(
                    f"{source}: {path} has {value.numel()} elements but its file stores {stored} of them (a view "
                    f"that repeats its elements); {WRITTEN_BY}"
                )


def check_entry(entry: Mapping[str, Any], source: str) -> None:
    """lstm_rec's entry (format 2) holds an item index, network settings, a prior and a training time as written."""
    n_items = _check_item_index(entry, source)
    network = entry.get("network")
    if not isinstance(network, Mapping):
        raise CheckpointError(f"{source}: its 'network' must be a mapping of settings, got {network!r}; {WRITTEN_BY}")
    check_network_settings(network, source)
    _check_prior(entry.get("prior"), n_items, source)
    _check_blend(entry.get("blend"), n_items, source)
    seconds = entry.get("train_seconds", 0.0)
    if not _is_number(seconds):
        raise CheckpointError(f"{source}: its 'train_seconds' must be a number, got {seconds!r}; {WRITTEN_BY}")


def _check_item_index(entry: Mapping[str, Any], source: str) -> int:
    """The number of items of a well-formed item index: distinct ids, one count each."""
    ids, counts = entry.get("item_ids"), entry.get("item_counts")
    numeric = isinstance(ids, Tensor) and ids.dim() == 1 and ids.dtype in ID_DTYPES
    if not (numeric or (isinstance(ids, list) and all(isinstance(i, str) for i in ids))) or len(ids) == 0:
        raise CheckpointError(
            f"{source}: its 'item_ids' must be a 1-D tensor of ids or a list of text ids, not empty; {WRITTEN_BY}"
        )
    if not (isinstance(counts, Tensor) and counts.dim() == 1 and not counts.is_floating_point()):
        raise CheckpointError(f"{source}: its 'item_counts' must be a 1-D integer tensor, one count per item id")
    if len(counts) != len(ids):
        raise CheckpointError(f"{source}: its item index has {len(counts)} counts for {len(ids)} item ids")
    unique, seen = np.unique(ids.numpy() if numeric else np.asarray(ids, dtype=object), return_counts=True)
    if len(unique) != len(ids):
        repeated = ", ".join(map(str, unique[seen > 1][:5]))
        raise CheckpointError(f"{source}: its 'item_ids' repeats ids ({repeated}); each item id must appear once")
    return len(ids)


def _check_blend(blend: Any, n_items: int, source: str) -> None:
    """A kNN blend (lstm_rec.blend.KNNBlend.to_checkpoint): its weight, V-SKNN settings and training sessions."""
    if blend is None:
        return
    from lstm_rec.blend import KNN_SETTINGS, REPEAT_SHAPES, RepeatBonus

    if not isinstance(blend, Mapping):
        raise CheckpointError(f"{source}: its 'blend' must be null or a mapping (weight, settings, sessions)")
    settings, repeat = blend.get("settings"), blend.get("repeat")
    if repeat is not None:  # the repeat bonus; blends saved before it have none. RepeatBonus checks its own values.
        try:
            RepeatBonus(repeat.get("shape"), repeat.get("weight"))
        except (AttributeError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{source}: its blend's repeat bonus must be null or a shape among {sorted(REPEAT_SHAPES)} and a "
                f"finite nonzero weight, got {repeat!r}"
            ) from error
    for name in ("weight", "scale"):
        value = blend.get(name)
        if name == "weight" and repeat is not None and _is_number(value) and value == 0:
            continue  # a repeat bonus alone
        if not (_is_number(value) and value > 0):
            raise CheckpointError(f"{source}: its kNN blend's {name} must be a number > 0, got {value!r}")
    if not (isinstance(settings, Mapping) and set(settings) <= set(KNN_SETTINGS)):
        raise CheckpointError(f"{source}: its kNN blend's settings must be some of {sorted(KNN_SETTINGS)}")
    items, offsets, times = blend.get("items"), blend.get("offsets"), blend.get("last_times")
    integer = all(isinstance(t, Tensor) and t.dim() == 1 and not t.is_floating_point() for t in (items, offsets))
    if not integer or not (isinstance(times, Tensor) and times.dim() == 1 and times.is_floating_point()):
        raise CheckpointError(
            f"{source}: its kNN blend's sessions must be 1-D tensors: integer items and offsets, float last_times"
        )
    if len(items) and not (int(items.min()) >= 1 and int(items.max()) <= n_items):
        raise CheckpointError(f"{source}: its kNN blend's items must be item indices 1..{n_items}")
    ordered = len(offsets) >= 1 and int(offsets[0]) == 0 and bool((offsets[1:] >= offsets[:-1]).all())
    if not (ordered and int(offsets[-1]) == len(items) and len(times) == len(offsets) - 1):
        raise CheckpointError(
            f"{source}: its kNN blend's offsets must rise from 0 to its {len(items)} items, with one last time each "
            "session"
        )


def _check_prior(prior: Any, n_items: int, source: str) -> None:
    if prior is None:
        return
    if not isinstance(prior, Mapping):
        raise CheckpointError(f"{source}: its 'prior' must be null or a mapping of scores, weight and hours")
    scores, weight, hours = prior.get("scores"), prior.get("weight"), prior.get("hours")
    if not (isinstance(scores, Tensor) and scores.is_floating_point() and tuple(scores.shape) == (n_items,)):
        raise CheckpointError(f"{source}: its prior scores must be a 1-D floating-point tensor of {n_items} scores")
    if not (_is_number(weight) and weight >= 0):
        raise CheckpointError(f"{source}: its prior weight must be a number >= 0, got {weight!r}")
    if not (hours is None or (_is_number(hours) and hours > 0)):
        raise CheckpointError(f"{source}: its prior hours must be null or a positive number, got {hours!r}")


SIZES = ("embedding_dim", "hidden", "num_layers")
RATES = ("dropout", "embedding_dropout")


def check_network_settings(network: Mapping[str, Any], source: str) -> None:
    """Every setting is one SessionLSTM takes, of its type and range; members set only MEMBER_SETTINGS."""
    unknown = sorted(str(name) for name in network if name not in DEFAULTS)
    if unknown:
        raise CheckpointError(f"{source}: unknown network settings {unknown}; expected some of {sorted(DEFAULTS)}")
    for name in network:
        if name != "members":
            _check_setting(name, network[name], f"{source}: network setting {name}")
    members = network.get("members")
    if members is not None and not isinstance(members, list):
        raise CheckpointError(f"{source}: network setting members must be null or a list, got {members!r}")
    for position, member in enumerate(members or []):
        if not isinstance(member, Mapping):
            raise CheckpointError(f"{source}: members[{position}] must be a mapping of settings, got {member!r}")
        others = sorted(str(name) for name in member if name not in MEMBER_SETTINGS)
        if others:
            raise CheckpointError(
                f"{source}: members[{position}] sets {others}; a member can set only {list(MEMBER_SETTINGS)}"
            )
        for name, value in member.items():
            _check_setting(name, value, f"{source}: members[{position}].{name}")


def _check_setting(name: str, value: Any, what: str) -> None:
    if name in SIZES and not (_is_integer(value) and value > 0):
        raise CheckpointError(f"{what} must be a positive integer, got {value!r}")
    if name == "repeat_window" and not (_is_integer(value) and value >= 0):
        raise CheckpointError(f"{what} must be an integer >= 0, got {value!r}")
    if name in RATES and not (_is_number(value) and 0 <= value < 1):
        raise CheckpointError(f"{what} must be a number in [0, 1), got {value!r}")
    if name == "cell" and value not in CELLS:
        raise CheckpointError(f"{what} must be one of {list(CELLS)}, got {value!r}")
    if name == "recurrent_init" and value not in RECURRENT_INITS:
        raise CheckpointError(f"{what} must be one of {list(RECURRENT_INITS)}, got {value!r}")
    if name == "tie_weights" and not isinstance(value, bool):
        raise CheckpointError(f"{what} must be true or false, got {value!r}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def network_shapes(n_items: int, network: Mapping[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Each weight SessionLSTM(n_items, **network) holds with its shape, in order, without building it (checked
    against the real network in tests/test_checkpoint_safety.py)."""
    settings = DEFAULTS | dict(network)
    embedding, hidden, layers = settings["embedding_dim"], settings["hidden"], settings["num_layers"]
    members = settings["members"] or [{}]
    window = max(member.get("repeat_window", settings["repeat_window"]) for member in members)
    n_members = len(members)
    gates = 4 * hidden if settings["cell"] == "lstm" else 3 * hidden
    yield "item_embedding", (n_members, n_items + 1, embedding)
    for member in range(n_members):
        for layer in range(layers):
            inputs = embedding if layer == 0 else hidden
            yield f"lstms.{member}.weight_ih_l{layer}", (gates, inputs)
            yield f"lstms.{member}.weight_hh_l{layer}", (gates, hidden)
            yield f"lstms.{member}.bias_ih_l{layer}", (gates,)
            yield f"lstms.{member}.bias_hh_l{layer}", (gates,)
    if settings["tie_weights"]:
        if hidden != embedding:
            yield "to_embedding.weight", (n_members, embedding, hidden)
            yield "to_embedding.bias", (n_members, embedding)
        yield "output_bias", (n_members, n_items)
    else:
        yield "output.weight", (n_members, n_items, hidden)
        yield "output.bias", (n_members, n_items)
    if window > 0:
        yield "repeat_scores.weight", (n_members, window, hidden)
        yield "repeat_scores.bias", (n_members, window)


def check_weights(
    state_dict: Any,
    expected: Iterator[tuple[str, tuple[int, ...]]],
    source: str,
    needed_by: str = "its network settings",
    prefix: str = "net.",
) -> dict[str, Tensor]:
    """The weights under `prefix` of `state_dict` (prefix removed), exactly the `expected` names and shapes that
    `needed_by` (a network's settings) needs."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{source}: it has no 'state_dict' mapping of weights; {WRITTEN_BY}")
    stored = {name[len(prefix) :]: value for name, value in state_dict.items() if str(name).startswith(prefix)}
    needed = set()
    for name, shape in expected:  # stops at the first weight missing: the settings may claim millions of them
        needed.add(name)
        value = stored.get(name)
        if value is None:
            raise CheckpointError(f"{source}: it lacks {prefix}{name}, which {needed_by} need")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: {prefix}{name} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: {prefix}{name} holds {value.dtype}, not floating-point weights")
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: {prefix}{name} has shape {tuple(value.shape)}, but {needed_by} need {shape}"
            )
    extra = sorted(set(stored) - needed)
    if extra:
        raise CheckpointError(f"{source}: it holds {prefix}{extra[0]}, which {needed_by} do not have")
    return stored


# Lightning's part of a checkpoint, as the trainer reads it when resuming or testing: key -> (type, described).
TRAINING_STATE = {
    "epoch": (int, "an integer"),
    "global_step": (int, "an integer"),
    "loops": (Mapping, "a mapping"),
    "callbacks": (Mapping, "a mapping"),
    "optimizer_states": (list, "a list of optimizer state_dicts"),
    "lr_schedulers": (list, "a list of scheduler state_dicts"),
}


def check_training_state(checkpoint: Mapping[str, Any], source: str, resuming: bool) -> None:
    """Lightning's part of `checkpoint` has the types the trainer reads; resuming also needs optimizer states."""
    if not isinstance(checkpoint.get("pytorch-lightning_version"), str):
        raise CheckpointError(
            f"{source}: it has no 'pytorch-lightning_version', so Lightning cannot read it; {WRITTEN_BY}"
        )
    for key, (kind, described) in TRAINING_STATE.items():
        value = checkpoint.get(key)
        if key in checkpoint and (not isinstance(value, kind) or isinstance(value, bool)):
            raise CheckpointError(f"{source}: its '{key}' must be {described}, got {type(value).__name__}")
    missing = [key for key in ("optimizer_states", "lr_schedulers") if key not in checkpoint]
    if resuming and missing:
        raise CheckpointError(
            f"{source} holds no {missing} (saved with weights only?), so training cannot resume from it; resume "
            "from a run's checkpoints/last.ckpt, or score this one with scripts/evaluate.py"
        )
    for position, state in enumerate(checkpoint.get("optimizer_states", [])):
        if not _is_optimizer_state(state):
            raise CheckpointError(f"{source}: its optimizer_states[{position}] is not an optimizer's state_dict")
    for position, scheduler in enumerate(checkpoint.get("lr_schedulers", [])):
        if not isinstance(scheduler, Mapping):
            raise CheckpointError(f"{source}: its lr_schedulers[{position}] is not a scheduler's state_dict")


def _is_optimizer_state(state: Any) -> bool:
    """An optimizer's state_dict: a `state` mapping and `param_groups`, mappings each with a list of `params`."""
    if not isinstance(state, Mapping) or not isinstance(state.get("state"), Mapping):
        return False
    groups = state.get("param_groups")
    return isinstance(groups, list) and all(
        isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups
    )
