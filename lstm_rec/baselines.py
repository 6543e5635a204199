"""Baselines that score items through the same interface as the LSTM."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class Popularity:
    """Scores every item by its click count in the training data, whatever the session."""

    def __init__(self, counts: np.ndarray | Tensor) -> None:
        self.counts = torch.as_tensor(counts, dtype=torch.float32)  # (n_items,)
        self.n_items = len(self.counts)

    def forward(self, items: Tensor) -> Tensor:
        return items.new_zeros((*items.shape, 0), dtype=torch.float32)  # (B, T, 0): no state needed

    def score(self, states: Tensor) -> Tensor:
        return self.counts.to(states.device).expand(len(states), -1)  # (N, n_items)
