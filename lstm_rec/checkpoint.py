"""Checkpoints: what lstm_rec keeps beside the weights, and loading a trained network without Lightning.

Every checkpoint holds, under CHECKPOINT_KEY, the format version, the item index, the network's settings, the
item prior (or None) and the training time; the weights are the LightningModule's `net.*` entries.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_rec.data.sessions import ItemIndex
from lstm_rec.model import SessionLSTM, build_network
from lstm_rec.prior import ItemPrior, PriorScorer

CHECKPOINT_KEY = "lstm_rec"
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A file that is not a usable lstm_rec checkpoint."""


@dataclass
class TrainedModel:
    """A trained network with what scoring and reporting need from its checkpoint."""

    network: SessionLSTM
    item_index: ItemIndex
    prior: ItemPrior | None
    train_seconds: float

    def scorer(self) -> PriorScorer:
        """The network with its item prior added to its scores, as evaluation and serving score."""
        return PriorScorer(self.network, self.prior)


def write_entry(
    checkpoint: dict[str, Any],
    index: ItemIndex,
    network: dict[str, Any],
    prior: ItemPrior | None,
    train_seconds: float,
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
    }


def read_entry(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """lstm_rec's entry of a loaded checkpoint, in the current format (older formats are upgraded)."""
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict) or "item_ids" not in entry:
        raise CheckpointError(
            f"{source} is not an lstm_rec checkpoint (it has no '{CHECKPOINT_KEY}' entry with an item index); "
            "expected a .ckpt file written by scripts/train.py under <run dir>/checkpoints/"
        )
    version = entry.get("format_version")
    if version == 1:
        from lstm_rec.checkpoint_v1 import upgrade

        upgrade(checkpoint, source)
        return checkpoint[CHECKPOINT_KEY]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {version!r}; this lstm_rec reads versions 1 and "
            f"{FORMAT_VERSION}: load it with the lstm_rec that wrote it"
        )
    return entry


def item_index_of(entry: dict[str, Any]) -> ItemIndex:
    ids = entry["item_ids"]
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=object)
    return ItemIndex(ids=ids, counts=entry["item_counts"].cpu().numpy())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded without running code from the file (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at '{path}'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"ckpt_path: '{path}' is not a readable PyTorch checkpoint (corrupt, truncated, or another format): {error}"
        ) from error


def load_network(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained network of a checkpoint written by scripts/train.py, in eval mode on `device`."""
    checkpoint = read_checkpoint(path)
    source = f"ckpt_path '{path}'"
    entry = read_entry(checkpoint, source)
    index = item_index_of(entry)
    network = build_network(len(index), entry["network"])
    weights = {name[4:]: value for name, value in checkpoint["state_dict"].items() if name.startswith("net.")}
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: its weights do not fit its network settings: {error}") from error
    prior = ItemPrior.from_checkpoint(entry.get("prior"))
    return TrainedModel(network.to(device).eval(), index, prior, float(entry.get("train_seconds", 0.0)))
