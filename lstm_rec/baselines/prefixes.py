"""A baseline's prefix states by reference, and the distinct items of a run of prefixes.

A batch of B sessions of T clicks has B * T prefixes; spelling each one out takes B * T * T memory (120 GB for
a session of 10,000 clicks and its neighbours in a batch). Here a prefix is a (row, end) pair into the batch,
and only the prefixes being scored are summarised, as their distinct items: at most n_items entries each, so a
run of prefixes whose scores fit in memory has a summary that fits too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


@dataclass
class PrefixEntries:
    """The distinct items of N prefixes, one entry each, grouped by prefix in the order of the prefixes."""

    prefix: np.ndarray  # (P,) the prefix an entry belongs to
    column: np.ndarray  # (P,) the item's score column (item index - 1)
    count: np.ndarray  # (P,) clicks on the item in the prefix
    last: np.ndarray  # (P,) 1-based position of the item's last click in the prefix

    def take(self, part: slice) -> PrefixEntries:
        """The entries of the prefixes part.start .. part.stop - 1, numbered from 0."""
        begin, end = np.searchsorted(self.prefix, [part.start, part.stop])
        columns = (self.column[begin:end], self.count[begin:end], self.last[begin:end])
        return PrefixEntries(self.prefix[begin:end] - part.start, *columns)


class PrefixSummary:
    """What the baselines read of N prefixes: lengths and last items at once, the distinct items (`entries`) when
    first asked, since popularity and the last-item baselines never need them."""

    def __init__(self, clicks: ClickIndex, rows: np.ndarray, ends: np.ndarray) -> None:
        self.clicks, self.rows, self.ends = clicks, rows, ends
        self.lengths = np.minimum(ends + 1, clicks.lengths[rows])  # (N,) clicks, repeats counted
        self.last_item = clicks.items[rows, np.maximum(self.lengths - 1, 0)]  # (N,) 0 for an empty prefix

    @property
    def n_prefixes(self) -> int:
        return len(self.rows)

    @cached_property
    def entries(self) -> PrefixEntries:
        return self.clicks.entries(self.rows, self.ends)

    def matrix(self, values: np.ndarray, n_items: int) -> sp.csr_matrix:
        """(N, n_items) holding `values` (one per entry) at the prefixes' items."""
        entries = self.entries
        data = (np.asarray(values, dtype=np.float64), (entries.prefix, entries.column))
        return sp.csr_matrix(data, shape=(self.n_prefixes, n_items))

    def take(self, part: slice) -> PrefixSummary:
        """The summary of the prefixes part.start .. part.stop - 1 (their entries cut from this one's if known)."""
        summary = PrefixSummary(self.clicks, self.rows[part], self.ends[part])
        if "entries" in self.__dict__:
            summary.entries = self.entries.take(part)
        return summary


@dataclass
class ClickIndex:
    """Every click of a right-padded (B, T) batch grouped by (row, item), built once per batch in O(B * T).

    A group is one item in one row; a prefix (row, end) holds the groups of its row whose first click is at most
    `end`, and a group's clicks up to `end` give the item's count and last position in that prefix.
    """

    items: np.ndarray  # (B, T) item indices, 0 for padding (and for a click on an item the scorer does not know)
    lengths: np.ndarray  # (B,) each row's clicks through its last nonzero one: positions, holes counted
    click_keys: np.ndarray  # (C,) group * stride + position of every click, sorted
    group_start: np.ndarray  # (G,) each group's first click in click_keys
    group_column: np.ndarray  # (G,) each group's score column
    by_first: np.ndarray  # (G,) groups ordered by row, then first click
    first_keys: np.ndarray  # (G,) row * stride + first click position, in by_first order
    row_start: np.ndarray  # (B,) each row's first group in by_first
    stride: int

    @classmethod
    def of(cls, items: np.ndarray) -> ClickIndex:
        items = np.asarray(items, dtype=np.int64)
        stride = max(items.shape[1], 1)
        rows, positions = np.nonzero(items)
        columns = items[rows, positions] - 1
        order = np.lexsort((positions, columns, rows))  # by row, then item, then position
        rows, columns, positions = rows[order], columns[order], positions[order]
        opens = np.r_[True, (rows[1:] != rows[:-1]) | (columns[1:] != columns[:-1])][: len(rows)]  # none: no clicks
        group_start = np.flatnonzero(opens)
        group_of_click = np.cumsum(opens) - 1
        group_row, first = rows[group_start], positions[group_start]
        by_first = np.lexsort((first, group_row))
        return cls(
            items=items,
            lengths=_through_last_click(items),
            click_keys=group_of_click * stride + positions,
            group_start=group_start,
            group_column=columns[group_start],
            by_first=by_first,
            first_keys=group_row[by_first] * stride + first[by_first],
            row_start=np.searchsorted(group_row[by_first], np.arange(len(items))),
            stride=stride,
        )

    def entries(self, rows: np.ndarray, ends: np.ndarray) -> PrefixEntries:
        """The distinct items of the prefixes items[rows[n], :ends[n] + 1]: at most min(T, n_items) per prefix."""
        n_distinct = np.searchsorted(self.first_keys, rows * self.stride + ends, side="right") - self.row_start[rows]
        prefix = np.repeat(np.arange(len(rows)), n_distinct)
        rank = np.arange(len(prefix)) - np.repeat(np.cumsum(n_distinct) - n_distinct, n_distinct)
        groups = self.by_first[self.row_start[rows][prefix] + rank]  # the prefixes' groups, by first click
        group_keys = groups * self.stride
        after = np.searchsorted(self.click_keys, group_keys + ends[prefix], side="right")  # past the last click
        last = self.click_keys[after - 1] - group_keys + 1
        return PrefixEntries(prefix, self.group_column[groups], after - self.group_start[groups], last)


def _through_last_click(items: np.ndarray) -> np.ndarray:
    """(B,) 1 + the position of each row's last nonzero item (0 for an empty row). A row is right-padded, but a click
    on an item its scorer does not know is a 0 within it (a test catalog wider than the network's): lengths and
    positions then count that click too, so that a prefix's last position never exceeds its length."""
    nonzero = items > 0
    return np.where(nonzero.any(axis=1), items.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)


@dataclass
class Prefixes:
    """A baseline's prefix states: prefix n is items[rows[n], :ends[n] + 1] of the batch that `clicks` indexes.

    Indexed like the LSTM's states (a boolean (B, T) mask, a slice, index tensors), in memory linear in the clicks.
    """

    clicks: ClickIndex
    rows: Tensor
    ends: Tensor

    @classmethod
    def of(cls, items: Tensor) -> Prefixes:
        """Every prefix items[:, :t + 1] of a (B, T) batch, as (B, T) states."""
        batch, steps = items.shape
        rows = torch.arange(batch, device=items.device)[:, None].expand(batch, steps)
        ends = torch.arange(steps, device=items.device)[None, :].expand(batch, steps)
        return cls(ClickIndex.of(items.cpu().numpy()), rows, ends)

    def __getitem__(self, index: Any) -> Prefixes:
        return Prefixes(self.clicks, self.rows[index], self.ends[index])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def summary(self) -> PrefixSummary:
        """The summary of every prefix, flattened in row-major order."""
        return PrefixSummary(self.clicks, self.rows.cpu().numpy().ravel(), self.ends.cpu().numpy().ravel())
