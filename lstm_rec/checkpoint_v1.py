"""Reading checkpoints of format version 1 (lstm_rec 0.1): their settings, weights and prior in today's layout."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lstm_rec.checkpoint import CHECKPOINT_KEY, CheckpointError
from lstm_rec.model import MEMBER_SETTINGS

NETWORK_KEYS = ("embedding_dim", "hidden", "num_layers", "dropout", "embedding_dropout", "tie_weights", "repeat_window")


def upgrade(checkpoint: dict[str, Any], source: str) -> None:
    """Rewrite a version 1 checkpoint in place: the network settings and the item prior move into lstm_rec's entry,
    and the members' weights are stacked as SessionLSTM keeps them."""
    hparams = checkpoint.get("hyper_parameters", {})
    network = {key: hparams[key] for key in NETWORK_KEYS if key in hparams}
    members = hparams.get("members") or None
    if members:
        differ = sorted({key for member in members for key in member} - set(MEMBER_SETTINGS))
        if differ:
            raise CheckpointError(
                f"{source} (format version 1) is an ensemble whose members differ in {differ}; members now share "
                f"everything but {list(MEMBER_SETTINGS)}, so it cannot be loaded: retrain it"
            )
        network["members"] = [dict(member) for member in members]
    state = checkpoint["state_dict"]
    prefixes = [f"net.members.{m}." for m in range(len(members))] if members else ["net."]
    parts = [{name[len(p) :]: value for name, value in state.items() if name.startswith(p)} for p in prefixes]
    window = max([network.get("repeat_window", 0), *[m.get("repeat_window", 0) for m in members or []]])
    weights = _stacked(parts, window)
    prior_scores = state.get("net.item_prior")
    entry = checkpoint[CHECKPOINT_KEY]
    prior = None
    if prior_scores is not None and bool(prior_scores.ne(0).any()):
        prior = {
            "scores": prior_scores,
            "weight": hparams.get("recent_weight", 0.0),
            "hours": hparams.get("recent_hours"),
        }
    checkpoint["state_dict"] = {f"net.{name}": value for name, value in weights.items()}
    checkpoint[CHECKPOINT_KEY] = entry | {"format_version": 2, "network": network, "prior": prior, "upgraded_from": 1}


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
