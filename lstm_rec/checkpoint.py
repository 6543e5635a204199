"""Checkpoints: what lstm_rec keeps beside the weights, and loading a trained network without Lightning.

Every checkpoint holds, under CHECKPOINT_KEY, the format version, the item index, the network's settings, the
item prior (or None) and the training time; the weights are the LightningModule's `net.*` entries.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lstm_rec.blend import BlendScorer, KNNBlend
from lstm_rec.checkpoint_checks import (
    WRITTEN_BY,
    CheckpointError,
    check_entry,
    check_network_settings,
    check_tensors,
    check_weights,
    network_shapes,
)
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.model import MEMBER_SETTINGS, SessionLSTM, build_network
from lstm_rec.prior import ItemPrior, PriorScorer

CHECKPOINT_KEY = "lstm_rec"
FORMAT_VERSION = 2

__all__ = ["CheckpointError", "TrainedModel", "load_checked", "load_network", "read_checkpoint", "read_entry"]


@dataclass
class TrainedModel:
    """A trained network with what scoring and reporting need from its checkpoint."""

    network: SessionLSTM
    item_index: ItemIndex
    prior: ItemPrior | None
    train_seconds: float
    blend: KNNBlend | None = None

    def scorer(self) -> PriorScorer:
        """The network with its kNN blend and item prior added to its scores, as evaluation and serving score."""
        return PriorScorer(self.blended(), self.prior)

    def blended(self) -> SessionLSTM | BlendScorer:
        """The network, with the kNN blend's scores added when it has one."""
        return self.network if self.blend is None else BlendScorer(self.network, self.blend)


def write_entry(
    checkpoint: dict[str, Any],
    index: ItemIndex,
    network: dict[str, Any],
    prior: ItemPrior | None,
    train_seconds: float,
    blend: KNNBlend | None = None,
) -> None:
    """Store lstm_rec's entry as tensors and plain values, so that weights-only loading can read it."""
    numeric = np.issubdtype(index.ids.dtype, np.number)
    checkpoint[CHECKPOINT_KEY] = {
        "format_version": FORMAT_VERSION,
        "item_ids": torch.from_numpy(index.ids) if numeric else [str(i) for i in index.ids],
        "item_counts": torch.from_numpy(index.counts),
        "network": network,
        "prior": None if prior is None else prior.to_checkpoint(),
        "train_seconds": train_seconds,
        "blend": None if blend is None else blend.to_checkpoint(),
    }


def read_entry(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """lstm_rec's entry of a loaded checkpoint, in the current format (older formats are upgraded), checked."""
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict) or "item_ids" not in entry:
        raise CheckpointError(
            f"{source} is not an lstm_rec checkpoint (it has no '{CHECKPOINT_KEY}' entry with an item index); "
            f"{WRITTEN_BY} under <run dir>/checkpoints/"
        )
    version = entry.get("format_version")
    if version == 1 and not isinstance(version, bool):
        _upgrade_v1(checkpoint, source)
        entry = checkpoint[CHECKPOINT_KEY]
    elif version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{source} has checkpoint format version {version!r}; this lstm_rec reads versions 1 and "
            f"{FORMAT_VERSION}: load it with the lstm_rec that wrote it"
        )
    check_entry(entry, source)
    return entry


def item_index_of(entry: dict[str, Any]) -> ItemIndex:
    ids = entry["item_ids"]
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=object)
    return ItemIndex(ids=ids, counts=entry["item_counts"].cpu().numpy())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded without running code from the file.

    weights_only=True is passed explicitly: torch then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which only
    changes loads that leave weights_only unset (tests/test_checkpoint_safety.py sets it and checks).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at '{path}'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"ckpt_path '{path}' is not a readable PyTorch checkpoint of tensors and plain values (corrupt, "
            f"truncated, another format, or it holds code, which lstm_rec never runs): {error}"
        ) from error
    check_tensors(checkpoint, f"ckpt_path '{path}'")
    return checkpoint


def load_checked(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at `path` and lstm_rec's entry, with its weights checked against its network settings."""
    checkpoint = read_checkpoint(path)
    source = f"ckpt_path '{path}'"
    entry = read_entry(checkpoint, source)
    shapes = network_shapes(len(entry["item_counts"]), entry["network"])
    check_weights(checkpoint.get("state_dict"), shapes, source)
    return checkpoint, entry


def load_network(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained network of a checkpoint written by scripts/train.py, in eval mode on `device`."""
    checkpoint, entry = load_checked(path)
    index = item_index_of(entry)
    network = build_network(len(index), entry["network"])
    network.load_state_dict({name[4:]: value for name, value in checkpoint["state_dict"].items() if name[:4] == "net."})
    prior = ItemPrior.from_checkpoint(entry.get("prior"))
    blend = KNNBlend.from_checkpoint(entry.get("blend"), len(index))
    return TrainedModel(network.to(device).eval(), index, prior, float(entry.get("train_seconds", 0.0)), blend)


# Format version 1 (lstm_rec 0.1): module hyperparameters, each member's weights under net.members.<m>., the prior
# as a buffer of the network.
V1_NETWORK_KEYS = (
    "embedding_dim",
    "hidden",
    "num_layers",
    "dropout",
    "embedding_dropout",
    "tie_weights",
    "repeat_window",
)


def _upgrade_v1(checkpoint: dict[str, Any], source: str) -> None:
    """Rewrite a version 1 checkpoint in place: the network settings and the item prior move into lstm_rec's entry,
    and the members' weights are stacked as SessionLSTM keeps them."""
    source = f"{source} is a format version 1 checkpoint"
    hparams, state = checkpoint.get("hyper_parameters", {}), checkpoint.get("state_dict")
    network = _v1_network(hparams, source)
    members = network.get("members")
    prefixes = [f"net.members.{m}." for m in range(len(members))] if members else ["net."]
    for prefix in prefixes:
        if not isinstance(state, Mapping) or f"{prefix}item_embedding.weight" not in state:
            raise CheckpointError(f"{source} without its weights (no '{prefix}item_embedding.weight'); {WRITTEN_BY}")
    parts = [{n[len(p) :]: w for n, w in state.items() if isinstance(n, str) and n.startswith(p)} for p in prefixes]
    window = max([network.get("repeat_window", 0), *[m.get("repeat_window", 0) for m in members or []]])
    try:
        weights = _stacked(parts, window)
    except (KeyError, IndexError, AttributeError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source} whose weights do not fit together ({error!r}); {WRITTEN_BY}") from error
    prior_scores = state.get("net.item_prior")
    prior = None
    if isinstance(prior_scores, torch.Tensor) and bool(prior_scores.ne(0).any()):
        prior = {
            "scores": prior_scores,
            "weight": hparams.get("recent_weight", 0.0),
            "hours": hparams.get("recent_hours"),
        }
    checkpoint["state_dict"] = {f"net.{name}": value for name, value in weights.items()}
    entry = checkpoint[CHECKPOINT_KEY]
    checkpoint[CHECKPOINT_KEY] = entry | {"format_version": 2, "network": network, "prior": prior, "upgraded_from": 1}


def _v1_network(hparams: Any, source: str) -> dict[str, Any]:
    """The network settings of version 1 hyperparameters, checked."""
    if not isinstance(hparams, Mapping):
        raise CheckpointError(f"{source} whose 'hyper_parameters' is not a mapping; {WRITTEN_BY}")
    network = {key: hparams[key] for key in V1_NETWORK_KEYS if key in hparams}
    members = hparams.get("members") or None
    if members is not None and not (isinstance(members, list) and all(isinstance(m, Mapping) for m in members)):
        raise CheckpointError(f"{source} whose 'members' is not a list of mappings; {WRITTEN_BY}")
    if members:
        differ = sorted({str(key) for member in members for key in member} - set(MEMBER_SETTINGS))
        if differ:
            raise CheckpointError(
                f"{source}, an ensemble whose members differ in {differ}; members now share everything but "
                f"{list(MEMBER_SETTINGS)}, so it cannot be loaded: retrain it"
            )
        network["members"] = [dict(member) for member in members]
    check_network_settings(network, source)
    return network


def _stacked(parts: list[dict[str, Tensor]], window: int) -> dict[str, Tensor]:
    """Each member's version 1 weights -> SessionLSTM's: one tensor per kind with a leading member dimension."""
    weights: dict[str, Tensor] = {"item_embedding": torch.stack([p["item_embedding.weight"] for p in parts])}
    for member, part in enumerate(parts):
        weights |= {f"lstms.{member}.{name[5:]}": value for name, value in part.items() if name.startswith("lstm.")}
    for name in ("to_embedding.weight", "to_embedding.bias", "output.weight", "output.bias", "output_bias"):
        if name in parts[0]:
            weights[name] = torch.stack([p[name] for p in parts])
    if window > 0:
        hidden = parts[0]["lstm.weight_hh_l0"].shape[1]
        for name, shape in (("weight", (window, hidden)), ("bias", (window,))):
            padded = []
            for part in parts:
                own = part.get(f"repeat_scores.{name}", torch.zeros(0, *shape[1:]))
                padded.append(torch.cat([own, own.new_zeros(window - len(own), *shape[1:])]))
            weights[f"repeat_scores.{name}"] = torch.stack(padded)
    return weights
