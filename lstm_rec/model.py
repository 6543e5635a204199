"""The network: item embedding -> LSTM -> a score for every item. Plain PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SessionLSTM(nn.Module):
    """Next-item scorer over click sessions.

    Item indices run 1..n_items with 0 as padding. Scores have one column per real item:
    column j scores item index j + 1.

    Args:
        n_items: catalog size, padding excluded.
        embedding_dim: size of the item embeddings.
        hidden: LSTM hidden size.
        num_layers: stacked LSTM layers.
        dropout: on the LSTM output and between stacked layers.
        embedding_dropout: on the input embeddings.
        tie_weights: score items with their input embeddings (a linear map takes the LSTM output
            to the embedding size when the two differ), which saves n_items * hidden parameters.
    """

    def __init__(
        self,
        n_items: int,
        embedding_dim: int = 64,
        hidden: int = 100,
        num_layers: int = 1,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.lstm = nn.LSTM(
            embedding_dim, hidden, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.output_dropout = nn.Dropout(dropout)
        self.tie_weights = tie_weights
        if tie_weights:
            self.to_embedding = nn.Linear(hidden, embedding_dim) if hidden != embedding_dim else nn.Identity()
            self.output_bias = nn.Parameter(torch.zeros(n_items))
        else:
            self.output = nn.Linear(hidden, n_items)
        # Small item embeddings (Glorot-uniform over the catalog) keep the tied scores in range at the start;
        # PyTorch's default N(0, 1) trains markedly worse here.
        nn.init.xavier_uniform_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, items: Tensor) -> Tensor:
        """One state per prefix: state t summarises items[:, :t + 1]. Right padding is harmless."""
        return self.forward_with_state(items)[0]

    def forward_with_state(
        self, items: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Like forward, continuing from an LSTM state (h, c), each (num_layers, B, H); returns the new state."""
        embedded = self.embedding_dropout(self.item_embedding(items))  # (B, T, E)
        outputs, state = self.lstm(embedded, state)  # (B, T, H)
        return self.output_dropout(outputs), state

    def score_columns(self, states: Tensor, columns: Tensor) -> Tensor:
        """Scores of the items in `columns` only: (N, H) states, (C,) columns -> (N, C), as score() would give."""
        if self.tie_weights:
            # A lookup (not weight[1:][columns]) gives a lean backward: no full-size gradient of a slice.
            weight, bias = F.embedding(columns + 1, self.item_embedding.weight), self.output_bias[columns]
            return F.linear(self.to_embedding(states), weight, bias)
        return F.linear(states, self.output.weight[columns], self.output.bias[columns])

    def score(self, states: Tensor) -> Tensor:
        """Scores of every item for each state: (..., H) -> (..., n_items)."""
        if self.tie_weights:
            return F.linear(self.to_embedding(states), self.item_embedding.weight[1:], self.output_bias)
        return self.output(states)
