"""The network: item embedding -> LSTM -> a score for every item, for one network or an ensemble. Plain PyTorch."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lstm_rec.layers import MemberDropout, MemberLinear, candidate_scores, catalog_scores

# What an ensemble member may set for itself; every other setting is shared, so the members run as one batched
# computation (same shapes).
MEMBER_SETTINGS = ("dropout", "embedding_dropout", "repeat_window")
# The recurrent cells a network may use (model.cell).
CELLS = ("lstm", "gru")
# How the recurrent cell's weights start (model.recurrent_init): torch: PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for every
# weight and bias; glorot: each gate's input and recurrent matrices Glorot-uniform on their own (in + H), biases 0,
# as GRU4Rec initialises its GRU.
RECURRENT_INITS = ("torch", "glorot")


@dataclass
class PrefixStates:
    """What scoring needs after each prefix of a session, indexed like the prefixes.

    Attributes:
        hidden: (M, *prefixes, H) each member's LSTM output.
        recent: (*prefixes, W) the latest W clicks of the prefix, most recent first, 0 before the session
            starts; None when no member has repeat scores.
    """

    hidden: Tensor
    recent: Tensor | None = None

    def __getitem__(self, index: Any) -> PrefixStates:
        index = index if isinstance(index, tuple) else (index,)
        recent = None if self.recent is None else self.recent[index]
        return PrefixStates(self.hidden[(slice(None), *index)], recent)

    def __len__(self) -> int:
        return self.hidden.shape[1]

    def flat(self) -> PrefixStates:
        """The prefixes in one dimension: hidden (M, N, H), recent (N, W)."""
        recent = None if self.recent is None else self.recent.reshape(-1, self.recent.shape[-1])
        return PrefixStates(self.hidden.reshape(len(self.hidden), -1, self.hidden.shape[-1]), recent)


@dataclass
class Carry:
    """A live session between clicks: the members' LSTM states side by side, and its latest clicks.

    Attributes:
        h, c: (num_layers, B, M * H); zeros for a new session.
        recent: (B, W) the latest clicks, most recent first, 0 where there are none; None without repeat scores.
    """

    h: Tensor
    c: Tensor
    recent: Tensor | None = None


# Most prefixes whose repeat scores a serving network sums row by row (rowwise_repeat_scores); more take the
# batched product (per-position answers of long sessions: scores equal within rounding).
ROWWISE_MAX_ROWS = 64


class RowLookup(torch.autograd.Function):
    """Rows of a member-stacked table (M, R, E) by flat index m * R + r, with a sparse gradient: only the rows
    looked up get one, so an optimizer that takes sparse gradients (Adagrad) updates those rows alone instead of
    the whole table. The values equal a dense lookup's; the gradient equals the dense one where it is not zero."""

    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return F.embedding(index, table.view(-1, table.shape[-1]))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        members, rows, width = ctx.table_shape
        flat = index.reshape(-1)
        where = torch.stack([torch.div(flat, rows, rounding_mode="floor"), flat % rows])
        values = grad.reshape(-1, width)
        return torch.sparse_coo_tensor(where, values, (members, rows, width), check_invariants=False), None


class SessionLSTM(nn.Module):
    """Next-item scorer over click sessions: M >= 1 member networks of one shape, run as one batched computation.

    Item indices run 1..n_items with 0 as padding; score column j is item index j + 1. An ensemble scores an
    item by its members' mean score; each member trains on its own loss (see lstm_rec.losses).

    Args:
        n_items: catalog size, padding excluded.
        embedding_dim, hidden, num_layers: sizes, shared by all members.
        cell: the recurrent cell, "lstm" or "gru" (a GRU carries no cell state: a carry's c stays zero).
        dropout: on the LSTM output and between stacked layers.
        embedding_dropout: on the input embeddings.
        tie_weights: score items with their input embeddings (a linear map takes the LSTM output to the
            embedding size), which saves n_items * hidden parameters per member.
        recurrent_init: how the cell's weights start, one of RECURRENT_INITS.
        repeat_window: 0, or how many of the latest clicks get a repeat score: each of the last
            `repeat_window` distinct items of the prefix adds a learned function of the state to its score,
            one per recency (the current click, the one before...).
        members: None for one network, or one mapping per member of the settings in MEMBER_SETTINGS in which
            it differs from the arguments above ({} for a member like them).
    """

    def __init__(
        self,
        n_items: int,
        embedding_dim: int = 64,
        hidden: int = 100,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        tie_weights: bool = False,
        repeat_window: int = 0,
        members: Sequence[Mapping[str, Any]] | None = None,
        recurrent_init: str = "torch",
    ) -> None:
        super().__init__()
        if cell == "auto":
            raise ValueError(
                "model.cell=auto is chosen from the training data by the training job (lstm_rec.jobs.runs.build_model);"
                f" a network built directly needs one of {list(CELLS)}"
            )
        if cell not in CELLS:
            raise ValueError(f"model.cell must be one of {list(CELLS)}, got {cell!r}")
        if recurrent_init not in RECURRENT_INITS:
            raise ValueError(f"model.recurrent_init must be one of {list(RECURRENT_INITS)}, got {recurrent_init!r}")
        common = {"dropout": dropout, "embedding_dropout": embedding_dropout, "repeat_window": repeat_window}
        settings = member_settings(members, common)
        self.n_items, self.n_members, self.hidden_size = n_items, len(settings), hidden
        self.tie_weights, self.cell = tie_weights, cell
        # Training sets this (SessionRecModule.sparse_item_grad): lookups of the item table give sparse gradients.
        self.sparse_item_grad = False
        # Serving sets this (lstm_rec.serving.Recommender): repeat scores row by row, the same whatever the batch.
        self.rowwise_repeat_scores = False
        self.item_embedding = nn.Parameter(torch.empty(self.n_members, n_items + 1, embedding_dim))
        self.embedding_dropout = MemberDropout([s["embedding_dropout"] for s in settings])
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        # Named lstms whatever the cell, so that the weights keep their names in checkpoints.
        self.lstms = nn.ModuleList(
            recurrent(embedding_dim, hidden, num_layers, batch_first=True, dropout=s["dropout"] * (num_layers > 1))
            for s in settings
        )
        if recurrent_init == "glorot":
            for recurrent_net in self.lstms:
                glorot_gates_(recurrent_net)
        self.output_dropout = MemberDropout([s["dropout"] for s in settings])
        self._build_output(hidden, embedding_dim)
        self._build_repeat_scores(hidden, [s["repeat_window"] for s in settings])
        # Small item embeddings (Glorot-uniform over the catalog) keep tied scores in range at the start;
        # PyTorch's default N(0, 1) trains markedly worse here. The padding row stays 0.
        for weight in self.item_embedding:
            nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.item_embedding[:, 0].zero_()

    def _build_output(self, hidden: int, embedding_dim: int) -> None:
        """Tied: a map of the state to the embedding size (when they differ) and a bias per item; else a linear
        layer to the item scores."""
        if self.tie_weights:
            self.to_embedding = MemberLinear(self.n_members, hidden, embedding_dim) if hidden != embedding_dim else None
            self.output_bias = nn.Parameter(torch.zeros(self.n_members, self.n_items))
        else:
            self.output = MemberLinear(self.n_members, hidden, self.n_items)

    def _build_repeat_scores(self, hidden: int, windows: list[int]) -> None:
        """One score per recency up to the largest window; each member's own window as a mask (M, 1, W)."""
        self.repeat_window = max(windows)
        if self.repeat_window > 0:
            self.repeat_scores = MemberLinear(self.n_members, hidden, self.repeat_window)
            mask = (torch.arange(self.repeat_window) < torch.tensor(windows)[:, None])[:, None].float()
            self.register_buffer("window_mask", mask, persistent=False)

    @property
    def num_layers(self) -> int:
        return self.lstms[0].num_layers

    @property
    def state_size(self) -> int:
        """The size of a carried h or c: the members' states side by side."""
        return self.n_members * self.hidden_size

    def initial_carry(self, batch_size: int, device: torch.device | str = "cpu") -> Carry:
        """The carry of new sessions: zero states, no recent clicks."""
        shape = (self.num_layers, batch_size, self.state_size)
        recent = torch.zeros((batch_size, self.repeat_window), dtype=torch.long, device=device)
        return Carry(
            torch.zeros(shape, device=device), torch.zeros(shape, device=device), recent if self.repeat_window else None
        )

    def encode(self, items: Tensor) -> PrefixStates:
        """(B, T) right-padded item indices -> states (M, B, T, H) of every prefix items[:, :t + 1]."""
        return self(items)[0]

    def forward(self, items: Tensor, carry: Carry | None = None) -> tuple[PrefixStates, Carry]:
        """Like encode, continuing from `carry` (None: new sessions); also returns the carry after the last step."""
        offsets = torch.arange(self.n_members, device=items.device).view(-1, 1, 1) * (self.n_items + 1)
        embedded = self.embedding_dropout(self._rows(items + offsets))  # (M, B, T, E)
        states = [None] * self.n_members if carry is None else _split(carry, self.n_members)
        results = [self._recur(lstm, x, s) for lstm, x, s in zip(self.lstms, embedded, states, strict=True)]
        outputs, finals = [output for output, _ in results], [final for _, final in results]
        hidden = self.output_dropout(torch.stack(outputs))  # (M, B, T, H)
        recent = None
        if self.repeat_window > 0:
            recent = recent_items(items, self.repeat_window, None if carry is None else carry.recent)  # (B, T, W)
        h, c = (torch.cat([final[i] for final in finals], dim=-1) for i in (0, 1))  # (layers, B, M * H)
        return PrefixStates(hidden, recent), Carry(h, c, None if recent is None else recent[:, -1])

    def _recur(
        self, layer: nn.Module, inputs: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One member's recurrent layers over inputs (B, T, E) from state (h, c): outputs and the final (h, c)."""
        if self.cell == "lstm":
            return layer(inputs, state)
        outputs, h = layer(inputs, None if state is None else state[0])
        return outputs, (h, torch.zeros_like(h))

    def score(self, states: PrefixStates) -> Tensor:
        """Scores of every item: states (M, *prefixes, H) -> (*prefixes, n_items), the members' mean.

        The mean of the members' products is one product of their side-by-side queries with their side-by-side
        output weights, so an ensemble scores the catalog in one pass."""
        flat = states.flat()
        members = self.n_members
        queries = self._query(flat.hidden) if self.tie_weights else flat.hidden  # (M, N, D)
        weight = self.item_embedding[:, 1:] if self.tie_weights else self.output.weight  # (M, n_items, D)
        bias = self.output_bias if self.tie_weights else self.output.bias  # (M, n_items)
        joined = queries.permute(1, 0, 2).reshape(queries.shape[1], -1)  # (N, M * D)
        if members > 1:
            joined = joined / members
        scores = catalog_scores(bias.mean(0), joined, weight.permute(1, 0, 2).reshape(self.n_items, -1))
        if self.repeat_window > 0:
            bonus = self._repeat_bonus(flat).to(scores.dtype).sum(0) / members  # (N, W); 0 at padding clicks
            scores.scatter_add_(1, (flat.recent - 1).clamp(min=0), bonus)
        return scores.view(*states.hidden.shape[1:-1], self.n_items)

    def score_members(self, states: PrefixStates) -> Tensor:
        """Each member's scores of every item: states (M, N, H) -> (M, N, n_items)."""
        if self.tie_weights:
            weight, bias = self.item_embedding[:, 1:], self.output_bias  # (M, n_items, E), (M, n_items)
            scores = torch.baddbmm(bias[:, None], self._query(states.hidden), weight.transpose(1, 2))
        else:
            scores = self.output(states.hidden)
        if self.repeat_window > 0:
            bonus = self._repeat_bonus(states).to(scores.dtype)  # (M, N, W); 0 at padding clicks
            index = (states.recent - 1).clamp(min=0).expand(self.n_members, -1, -1)
            scores = scores.scatter_add(-1, index, bonus)
        return scores

    def score_columns(self, states: PrefixStates, columns: Tensor, distinct: bool = False) -> Tensor:
        """Each member's scores of its own candidate columns, for training: states (M, N, H), columns (M, C) ->
        (M, N, C). A column of -1 is a placeholder whose score means nothing.

        `distinct=True` promises that no member's columns repeat an item, which places repeat scores cheaply.
        """
        if self.tie_weights:
            # A lookup (not a slice of the table) gives a lean backward: no full-size gradient of a slice.
            offsets = torch.arange(self.n_members, device=columns.device)[:, None] * (self.n_items + 1)
            weight = self._rows(columns + 1 + offsets)
            bias = self.output_bias.gather(1, columns.clamp(min=0))  # (M, C)
            scores = candidate_scores(bias, self._query(states.hidden), weight)
        else:
            scores = self.output.columns(states.hidden, columns.clamp(min=0))
        if self.repeat_window > 0:
            scores = scores + self._placed_bonus(states, columns, distinct)
        return scores

    def _rows(self, index: Tensor) -> Tensor:
        """The item table's rows at flat indices member * (n_items + 1) + item: (*index.shape, E)."""
        table = self.item_embedding
        if self.sparse_item_grad and table.requires_grad and torch.is_grad_enabled():
            return RowLookup.apply(table, index)
        return F.embedding(index, table.view(-1, table.shape[-1]))

    def _query(self, hidden: Tensor) -> Tensor:
        """(M, N, H) -> (M, N, E): what tied scores multiply with the item embeddings."""
        return hidden if self.to_embedding is None else self.to_embedding(hidden)

    def _placed_bonus(self, states: PrefixStates, columns: Tensor, distinct: bool) -> Tensor:
        """(M, N, C) the repeat bonus of each candidate column."""
        bonus = self._repeat_bonus(states)  # (M, N, W)
        recent = states.recent  # (N, W)
        if not distinct:
            match = recent[None, :, :, None] == (columns + 1)[:, None, None, :]  # (M, N, W, C)
            return torch.einsum("mnw,mnwc->mnc", bonus, match.to(bonus.dtype))
        # Each recent item's position among a member's columns, -1 when it is not a candidate.
        members, width = columns.shape
        position = columns.new_full((members, self.n_items + 1), -1)
        position.scatter_(1, columns + 1, torch.arange(width, device=columns.device).expand(members, -1))
        position[:, 0] = -1  # placeholders (-1 + 1 = 0) and padding clicks are never candidates
        where = position[:, recent]  # (M, N, W)
        placed = torch.zeros(members, len(recent), width, dtype=bonus.dtype, device=bonus.device)
        return placed.scatter_add(2, where.clamp(min=0), bonus * (where >= 0))

    def _repeat_bonus(self, states: PrefixStates) -> Tensor:
        """(M, N, W) each recent item's bonus; repeats of a more recent click, padding and recencies beyond a
        member's window get 0."""
        recent = states.recent
        window = recent.shape[-1]
        earlier = torch.ones(window, window, dtype=torch.bool, device=recent.device).tril(-1)  # j < w
        repeated = ((recent[..., :, None] == recent[..., None, :]) & earlier).any(-1)
        counts = ((recent > 0) & ~repeated).to(states.hidden.dtype)  # (N, W)
        # Row by row only for a few rows (serving's blocks): its memory grows with rows * members * window * hidden.
        rowwise = self.rowwise_repeat_scores and states.hidden.shape[1] <= ROWWISE_MAX_ROWS
        linear = self.repeat_scores.rowwise if rowwise else self.repeat_scores
        return linear(states.hidden) * self.window_mask * counts


@torch.no_grad()
def glorot_gates_(recurrent: nn.LSTM | nn.GRU) -> None:
    """Each gate's input and recurrent matrix Glorot-uniform over its own (inputs + hidden) and every bias 0, in
    place (PyTorch stacks the gates' matrices row-wise: (gates * H, inputs))."""
    hidden = recurrent.hidden_size
    for name, weight in recurrent.named_parameters():
        if name.startswith("bias"):
            weight.zero_()
            continue
        for gate in weight.split(hidden, dim=0):
            nn.init.xavier_uniform_(gate)  # a view: fills its rows of `weight` in place


def build_network(n_items: int, settings: Mapping[str, Any]) -> SessionLSTM:
    """The network of `settings` (SessionLSTM's arguments but n_items), with a clear error for unknown ones."""
    known = set(inspect.signature(SessionLSTM).parameters) - {"n_items"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown network settings {unknown}; expected some of {sorted(known)}")
    return SessionLSTM(n_items, **settings)


def member_settings(members: Sequence[Mapping[str, Any]] | None, common: dict[str, Any]) -> list[dict[str, Any]]:
    """Every member's settings: `common`, updated with what its entry of `members` sets (None: one network)."""
    if members is None or len(members) == 0:
        return [dict(common)]
    settings = []
    for position, member in enumerate(members):
        member = {} if member is None else member
        if not isinstance(member, Mapping):
            raise ValueError(f"model.members[{position}] must be a mapping of settings (or {{}}), got {member!r}")
        unknown = sorted(set(member) - set(MEMBER_SETTINGS))
        if unknown:
            raise ValueError(
                f"model.members[{position}] sets {unknown}; a member can set only {list(MEMBER_SETTINGS)} (the "
                "members share every other setting, so that they train as one batched computation)"
            )
        settings.append(common | {str(key): value for key, value in member.items()})
    return settings


def recent_items(items: Tensor, window: int, before: Tensor | None = None) -> Tensor:
    """(B, T) -> (B, T, window): clicks t, t - 1, ..., t - window + 1 of each row, continuing `before` (B, window),
    the latest clicks before items[:, 0], most recent first (None: the session starts with items[:, 0])."""
    earlier = items.new_zeros(len(items), window - 1) if before is None else before[:, : window - 1].flip(-1)
    return torch.cat([earlier, items], dim=1).unfold(1, window, 1).flip(-1)


def _split(carry: Carry, members: int) -> list[tuple[Tensor, Tensor]]:
    hs, cs = carry.h.chunk(members, dim=-1), carry.c.chunk(members, dim=-1)
    return [(h.contiguous(), c.contiguous()) for h, c in zip(hs, cs, strict=True)]
