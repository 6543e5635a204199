"""Checkpoints: the item index inside them, and safe loading of a trained module."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lstm_rec.data.sessions import ItemIndex

if TYPE_CHECKING:
    from lstm_rec.module import SessionRecModule

CHECKPOINT_KEY = "lstm_rec"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable lstm_rec checkpoint."""


def item_index_to_checkpoint(index: ItemIndex, checkpoint: dict[str, Any]) -> None:
    """Store the item index as tensors and plain lists, so ``weights_only`` loading can read it."""
    numeric = np.issubdtype(index.ids.dtype, np.number)
    checkpoint[CHECKPOINT_KEY] = {
        "format_version": FORMAT_VERSION,
        "item_ids": torch.from_numpy(index.ids) if numeric else [str(i) for i in index.ids],
        "item_counts": torch.from_numpy(index.counts),
    }


def item_index_from_checkpoint(checkpoint: dict[str, Any], source: str) -> ItemIndex:
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(entry, dict) or "item_ids" not in entry:
        raise CheckpointError(
            f"{source} is not an lstm_rec checkpoint (it has no '{CHECKPOINT_KEY}' entry with an item index); "
            "expected a .ckpt file written by scripts/train.py under <run dir>/checkpoints/"
        )
    ids = entry["item_ids"]
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=object)
    return ItemIndex(ids=ids, counts=entry["item_counts"].cpu().numpy())


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> SessionRecModule:
    """Load a trained SessionRecModule from `path` without running code from the file (weights_only)."""
    from lstm_rec.module import SessionRecModule

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at '{path}'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"ckpt_path: '{path}' is not a readable PyTorch checkpoint (corrupt, truncated, or another format): {error}"
        ) from error
    index = item_index_from_checkpoint(checkpoint, f"ckpt_path '{path}'")
    hparams = checkpoint.get("hyper_parameters", {})
    module = SessionRecModule(item_index=index, **hparams)
    module.load_state_dict(checkpoint["state_dict"])
    module.train_seconds = checkpoint[CHECKPOINT_KEY].get("train_seconds", 0.0)
    return module.to(map_location).eval()
