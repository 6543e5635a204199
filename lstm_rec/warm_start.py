"""A trained network's weights in a network of a grown catalog: known items keep their rows, new ones stay fresh.

Plain PyTorch. The grown catalog keeps the trained one's items at their indices and appends the new ones
(lstm_rec.data.ItemIndex.grown), so a known item's rows are the first rows of each item-indexed weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lstm_rec.model import SessionLSTM

# SessionLSTM's weights with one row per item, and the dimension of those rows (after the member dimension).
ITEM_DIMS = {"item_embedding": 1, "output.weight": 1, "output.bias": 1, "output_bias": 1}


@torch.no_grad()
def load_known_items(network: SessionLSTM, weights: Mapping[str, Tensor]) -> int:
    """Copy `weights`, those of the same network trained on a smaller catalog, into `network`: every item-indexed
    weight's leading rows (the trained items, and the padding row of the embedding), every other weight whole. The
    rows of the items beyond the trained catalog keep `network`'s own fresh values.

    Returns the number of items the weights held.
    """
    own = network.state_dict()
    if set(own) != set(weights):
        missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        raise ValueError(f"the trained weights do not fit this network: missing {missing}, unexpected {extra}")
    n_known = weights["item_embedding"].shape[1] - 1  # the padding row 0 is not an item
    for name, target in own.items():
        stored = weights[name]
        dim = ITEM_DIMS.get(name)
        part = target if dim is None else target.narrow(dim, 0, min(stored.shape[dim], target.shape[dim]))
        if part.shape != stored.shape:
            raise ValueError(
                f"trained weight {name} has shape {tuple(stored.shape)}, which does not fit this network's "
                f"{tuple(target.shape)}: the catalog may only grow and every other size must stay"
            )
        part.copy_(stored)
    return n_known
