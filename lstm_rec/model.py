"""The network: item embedding -> LSTM -> a score for every item. Plain PyTorch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ItemPrior(nn.Module):
    """A fixed score per item, the buffer `item_prior` (n_items,), that score() adds and training scores
    leave out; zero unless set (the recent-popularity prior). Weights saved before it existed load with a
    zero prior."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.register_buffer("item_prior", torch.zeros(n_items))

    def set_recent_prior(self, counts: np.ndarray, weight: float) -> None:
        """The recent-popularity prior: `weight` * log(1 + counts), counts (n_items,) of recent clicks."""
        prior = torch.as_tensor(weight * np.log1p(counts), dtype=self.item_prior.dtype)
        if prior.shape != self.item_prior.shape:
            raise ValueError(f"the prior needs one count per item ({len(self.item_prior)}), got {tuple(prior.shape)}")
        # A new tensor in place of the old one, not a copy into it: scoring that runs meanwhile in another
        # thread (a service) reads either the whole old prior or the whole new one.
        self.item_prior = prior.to(self.item_prior.device)

    def _with_prior(self, scores: Tensor, prior: bool) -> Tensor:
        return scores + self.item_prior if prior else scores

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "item_prior", torch.zeros_like(self.item_prior))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SessionLSTM(ItemPrior):
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
        repeat_window: 0, or how many of the latest clicks get a repeat score: each of the last
            `repeat_window` distinct items of the prefix adds a learned function of the state to its
            score, one per recency (1 = the current click, 2 = the one before...). Scoring then needs the
            prefix's `history` besides its state.

    Its item prior (see ItemPrior; zero unless set) is added by score(), not by score_columns().
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
        repeat_window: int = 0,
    ) -> None:
        super().__init__(n_items)
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=0)
        self.embedding_dropout = Dropout(embedding_dropout)
        self.lstm = nn.LSTM(
            embedding_dim, hidden, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.output_dropout = Dropout(dropout)
        self.tie_weights = tie_weights
        if tie_weights:
            self.to_embedding = nn.Linear(hidden, embedding_dim) if hidden != embedding_dim else nn.Identity()
            self.output_bias = nn.Parameter(torch.zeros(n_items))
        else:
            self.output = nn.Linear(hidden, n_items)
        self.repeat_window = repeat_window
        if repeat_window > 0:
            self.repeat_scores = nn.Linear(hidden, repeat_window)
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

    @property
    def num_layers(self) -> int:
        return self.lstm.num_layers

    @property
    def state_size(self) -> int:
        """The size of the LSTM state (h or c) and of the outputs."""
        return self.lstm.hidden_size

    def history(self, items: Tensor) -> Tensor:
        """(B, T) -> (B, T, W): the last W = repeat_window items of each prefix, most recent first, 0 before it."""
        return recent_items(items, max(self.repeat_window, 1))

    def _repeat_bonus(self, states: Tensor, history: Tensor) -> Tensor:
        """(..., H), (..., W) -> (..., W): each recent item's score bonus; repeats and padding get 0."""
        window = self.repeat_window
        history = history[..., :window]
        values = self.repeat_scores(states)
        earlier = torch.ones(window, window, dtype=torch.bool, device=history.device).tril(-1)  # j < w
        repeated = ((history[..., :, None] == history[..., None, :]) & earlier).any(-1)
        return values * ((history > 0) & ~repeated)

    def score_columns(
        self, states: Tensor, columns: Tensor, history: Tensor | None = None, distinct: bool = False
    ) -> Tensor:
        """Scores of the items in `columns` only: (N, H) states, (C,) columns -> (N, C), as score() would give
        without the prior; for training.

        `distinct=True` promises that no column repeats, which places repeat scores more cheaply.
        """
        if self.tie_weights:
            # A lookup (not weight[1:][columns]) gives a lean backward: no full-size gradient of a slice.
            weight, bias = F.embedding(columns + 1, self.item_embedding.weight), self.output_bias[columns]
            scores = F.linear(self.to_embedding(states), weight, bias)
        else:
            scores = F.linear(states, self.output.weight[columns], self.output.bias[columns])
        if self.repeat_window > 0:
            bonus = self._repeat_bonus(states, _needed(history))  # (N, W)
            history = history[:, : self.repeat_window]
            if distinct:
                # Each recent item's position among the columns, -1 when it is not a candidate.
                position = torch.full((self.n_items + 1,), -1, dtype=torch.long, device=columns.device)
                position[columns + 1] = torch.arange(len(columns), device=columns.device)
                where = position[history]  # (N, W)
                scores = scores.scatter_add(1, where.clamp(min=0), bonus * (where >= 0))
            else:
                match = (history[:, :, None] == (columns + 1)[None, None, :]).to(bonus.dtype)  # (N, W, C)
                scores = scores + torch.einsum("nw,nwc->nc", bonus, match)
        return scores

    def score(self, states: Tensor, history: Tensor | None = None, prior: bool = True) -> Tensor:
        """Scores of every item for each state: (..., H) -> (..., n_items), plus `item_prior` if `prior`."""
        if self.tie_weights:
            scores = F.linear(self.to_embedding(states), self.item_embedding.weight[1:], self.output_bias)
        else:
            scores = self.output(states)
        if self.repeat_window > 0:
            bonus = self._repeat_bonus(states, _needed(history)).to(scores.dtype)
            padded = F.pad(scores, (1, 0))  # column 0 takes the padding's bonus, which is 0
            scores = padded.scatter_add(-1, history[..., : self.repeat_window], bonus)[..., 1:]
        return self._with_prior(scores, prior)


class Dropout(nn.Dropout):
    """nn.Dropout, with a cheaper mask on the CPU: there, drawing uniforms and comparing them is 2-3x faster
    (forward and backward) than the Bernoulli draw nn.Dropout makes. Other devices keep the fused kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))


def recent_items(items: Tensor, window: int) -> Tensor:
    """(B, T) -> (B, T, window): items t, t - 1, ..., t - window + 1 of each row, 0 before its start."""
    return F.pad(items, (window - 1, 0)).unfold(1, window, 1).flip(-1)


def _needed(history: Tensor | None) -> Tensor:
    if history is None:
        raise ValueError("this model has repeat scores (repeat_window > 0): score it with the prefix's history too")
    return history


class SessionEnsemble(ItemPrior):
    """Several SessionLSTMs trained side by side, each on its own loss; an item's score is their mean.

    The members see the same batches, or each its own shuffle with `data.member_orders` (SessionRecModule).

    States are the members' LSTM outputs side by side, so anything that runs a SessionLSTM (evaluation,
    the recommender, export) runs an ensemble the same way.

    Args:
        n_items: catalog size, padding excluded.
        members: one dict per member of SessionLSTM arguments that differ from `common`.
        common: the SessionLSTM arguments every member shares.
    """

    def __init__(self, n_items: int, members: list[dict], common: dict) -> None:
        super().__init__(n_items)  # its own prior; the members' stay 0
        self.n_items = n_items
        self.members = nn.ModuleList(SessionLSTM(n_items, **(common | dict(member))) for member in members)
        layers = {member.lstm.num_layers for member in self.members}
        if len(layers) > 1:
            raise ValueError(f"ensemble members must share num_layers (their LSTM states are joined), got {layers}")
        self.num_layers = layers.pop()
        self.sizes = [member.state_size for member in self.members]
        self.state_size = sum(self.sizes)  # the members' states side by side
        self.repeat_window = max(member.repeat_window for member in self.members)

    def history(self, items: Tensor) -> Tensor:
        return recent_items(items, max(self.repeat_window, 1))

    def forward(self, items: Tensor) -> Tensor:
        return self.forward_with_state(items)[0]

    def forward_with_state(
        self, items: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Like SessionLSTM's; the members' outputs and (h, c) are joined along the hidden dimension."""
        hs = cs = [None] * len(self.members)
        if state is not None:
            hs, cs = state[0].split(self.sizes, dim=-1), state[1].split(self.sizes, dim=-1)
        results = [
            member.forward_with_state(items, None if h is None else (h, c))
            for member, h, c in zip(self.members, hs, cs, strict=True)
        ]
        outputs = torch.cat([output for output, _ in results], dim=-1)
        return outputs, (torch.cat([h for _, (h, _) in results], -1), torch.cat([c for _, (_, c) in results], -1))

    def split(self, states: Tensor) -> tuple[Tensor, ...]:
        """Joined states (..., sum of hidden sizes) -> each member's (..., hidden)."""
        return states.split(self.sizes, dim=-1)

    def score(self, states: Tensor, history: Tensor | None = None, prior: bool = True) -> Tensor:
        parts = self.split(states)
        scores = sum(m.score(s, history, False) for m, s in zip(self.members, parts, strict=True)) / len(self.members)
        return self._with_prior(scores, prior)

    def score_columns(
        self, states: Tensor, columns: Tensor, history: Tensor | None = None, distinct: bool = False
    ) -> Tensor:
        parts = self.split(states)
        scores = (m.score_columns(s, columns, history, distinct) for m, s in zip(self.members, parts, strict=True))
        return sum(scores) / len(self.members)
