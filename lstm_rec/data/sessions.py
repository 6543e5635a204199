"""Click logs as compact arrays: an item index built from training data, item indices plus offsets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from lstm_rec.data.ids import as_kind, check_known, id_kind, index_positions

log = logging.getLogger(__name__)

# Canonical column names of an event frame, whatever the user's file calls them.
SESSION, ITEM, TIME = "session", "item", "time"


class ItemIndex:
    """Maps original item ids to indices 1..n_items (0 is padding), with training click counts.

    A plain class rather than a dataclass: Hydra would turn a dataclass argument into a config node.
    """

    def __init__(self, ids: np.ndarray, counts: np.ndarray) -> None:
        self.ids = ids  # (n_items,) original ids; index i + 1 <-> ids[i]
        self.counts = counts  # (n_items,) int64 clicks of each item in the training data

    @classmethod
    def from_items(cls, item_ids: np.ndarray | pd.Series) -> ItemIndex:
        ids, counts = np.unique(np.asarray(item_ids), return_counts=True)
        return cls(ids=ids, counts=counts.astype(np.int64))

    def grown(self, item_ids: np.ndarray | pd.Series) -> ItemIndex:
        """This index's items at their positions, then the items of `item_ids` it lacks (sorted); every count is
        the item's clicks in `item_ids` (0 for items of this index that are not there any more)."""
        ids, clicks = np.unique(np.asarray(item_ids), return_counts=True)
        positions = self.lookup(ids)  # 0 where new
        new = positions == 0
        added = _in_type_of(ids[new], self.ids)
        counts = np.zeros(len(self) + len(added), dtype=np.int64)
        counts[positions[~new] - 1] = clicks[~new]
        counts[len(self) :] = clicks[new]
        return ItemIndex(ids=np.concatenate([self.ids, added]), counts=counts)

    def recounted(self, other: ItemIndex) -> ItemIndex:
        """The same items in the same positions, each with its count in `other` (0 where `other` lacks it)."""
        positions = other.lookup(self.ids)  # 0 where other lacks the item
        counts = np.where(positions > 0, other.counts[positions - 1], 0).astype(np.int64)
        return ItemIndex(ids=self.ids, counts=counts)

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _positions(self) -> tuple[pd.Index, str]:
        """The ids as a hash index, and their kind (lstm_rec.data.ids.id_kind), built on first lookup."""
        return pd.Index(self.ids), id_kind(self.ids)

    def lookup(self, item_ids: np.ndarray | pd.Series) -> np.ndarray:
        """Indices of `item_ids`, matched in the index's own id type (lstm_rec.data.ids); 0 where unknown."""
        positions = index_positions(*self._positions, np.asarray(item_ids))
        indices = positions.astype(np.int64, copy=False)
        indices += 1  # -1 for unknown ids
        return indices

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemIndex):
            return NotImplemented
        return np.array_equal(self.ids, other.ids) and np.array_equal(self.counts, other.counts)

    __hash__ = None  # mutable arrays inside: not hashable


def _in_type_of(ids: np.ndarray, index_ids: np.ndarray) -> np.ndarray:
    """`ids` as ids of `index_ids`' type, by the rules that match ids (lstm_rec.data.ids), so that the grown index
    keeps one id type."""
    kind = id_kind(index_ids)
    if len(ids) == 0 or kind == "other" or id_kind(ids) == kind:
        return ids.astype(index_ids.dtype) if kind == "integer" else ids
    values = as_kind(ids, kind)
    try:
        if None in values:
            raise ValueError(f"{ids[values.index(None)]!r} is not an id of this type")
        return np.array(values, dtype=index_ids.dtype if kind == "integer" else object)
    except (ValueError, OverflowError) as error:
        raise ValueError(
            f"new item ids such as {ids[:3].tolist()} cannot join an item index of {kind} ids ({error}); give "
            "the new data in the id type the model was trained with"
        ) from error


@dataclass(frozen=True)
class Sessions:
    """Sessions as one item array cut by offsets: session s is items[offsets[s]:offsets[s + 1]]."""

    items: np.ndarray  # (n_events,) int64 item indices in 1..n_items
    offsets: np.ndarray  # (n_sessions + 1,) int64, offsets[0] == 0
    times: np.ndarray | None = None  # (n_events,) float64 click times, when known

    @property
    def last_times(self) -> np.ndarray:
        """Time of each session's last click (the recency of kNN neighbours)."""
        if self.times is None:
            raise ValueError("these sessions carry no click times")
        return self.times[self.offsets[1:] - 1]

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_targets(self) -> int:
        """Next-item predictions: every position after the first of each session."""
        return int(np.maximum(self.lengths - 1, 0).sum())

    @property
    def is_target(self) -> np.ndarray:
        """(n_events,) True at the clicks that are next-item predictions: all but each session's first."""
        mask = np.ones(self.n_events, dtype=bool)
        mask[self.offsets[:-1][self.lengths > 0]] = False
        return mask

    def session(self, s: int) -> np.ndarray:
        return self.items[self.offsets[s] : self.offsets[s + 1]]

    def subset(self, sessions: np.ndarray) -> Sessions:
        """The given sessions (indices, in the order given) as Sessions of their own."""
        lengths = self.lengths[sessions]
        rows = np.repeat(self.offsets[sessions], lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        times = None if self.times is None else self.times[rows]
        return Sessions(items=self.items[rows], offsets=np.concatenate([[0], np.cumsum(lengths)]), times=times)


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Sort by session, then time; ties keep file order."""
    return events.sort_values([SESSION, TIME], kind="stable", ignore_index=True)


def is_sorted(session: np.ndarray, time: np.ndarray) -> bool:
    """True when rows are in order of session key, then time (as sort_events leaves them)."""
    same = session[1:] == session[:-1]
    return bool(np.all((session[1:] > session[:-1]) | (same & (time[1:] >= time[:-1]))))


def split_by_start_time(
    events: pd.DataFrame, fraction: float, name: str, max_predictions: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off the sessions that start last, `fraction` of all sessions, as a held-out part.

    Args:
        events: sorted event frame.
        fraction: share of sessions, in (0, 1), that go to the held-out part.
        name: what the held-out part is, for the log.
        max_predictions: None, or hold out no more of the latest sessions than reach this many next-item
            predictions (a session of n clicks holds n - 1), so that a large log keeps its recent sessions for
            training.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction for {name} must be in (0, 1), got {fraction}")
    if max_predictions is not None and max_predictions < 1:
        raise ValueError(f"the most predictions held out for {name} must be positive or null, got {max_predictions}")
    grouped = events.groupby(SESSION, sort=False)[TIME]
    starts = grouped.min().sort_values(kind="stable")
    n_held = round(len(starts) * fraction)
    capped = ""
    if max_predictions is not None:
        predictions = (grouped.size() - 1).reindex(starts.index).to_numpy()[::-1].cumsum()  # latest first
        enough = int(np.searchsorted(predictions, max_predictions)) + 1  # the latest sessions that reach it
        if enough < n_held:
            n_held, capped = enough, f"; capped at {max_predictions} predictions"
    if n_held == 0 or n_held == len(starts):
        raise ValueError(
            f"splitting {len(starts)} sessions with fraction {fraction} leaves {name} or training empty; "
            "give more sessions or another fraction"
        )
    held_out = events[SESSION].isin(starts.index[-n_held:]).to_numpy()
    log.info(
        "%s: the last %d of %d sessions by start time (%d events%s)", name, n_held, len(starts), held_out.sum(), capped
    )
    return events[~held_out].reset_index(drop=True), events[held_out].reset_index(drop=True)


def to_sessions(events: pd.DataFrame, index: ItemIndex, name: str, source: str | None = None) -> Sessions:
    """Map a sorted event frame onto `index`: drop rows with unknown items, then sessions shorter than 2.

    Rows of unknown items are removed, so the items around them become neighbours; every removal
    is logged. Raises if nothing is left, or, for a frame read from a file (`source`: its role and path), if
    most of its rows are on unknown items (lstm_rec.data.ids.check_known). Uses the frame's columns without
    copying where it can, so a large log needs little more memory than the frame and the resulting arrays.
    """
    items = index.lookup(events[ITEM])
    sessions = events[SESSION].to_numpy()
    times = events[TIME].to_numpy(np.float64)
    n_sessions_in = len(_session_starts(sessions))
    known = items > 0
    if source is not None:
        check_known(source, events[ITEM].to_numpy(), known, index.ids)
    if not known.all():
        items, sessions, times = items[known], sessions[known], times[known]
        log.info(
            "%s: dropped %d of %d rows whose item is not in the training data (%d sessions emptied)",
            name,
            len(known) - len(items),
            len(known),
            n_sessions_in - len(_session_starts(sessions)),
        )
    lengths = np.diff(np.append(_session_starts(sessions), len(items)))
    items, times, keep = _drop_short(items, times, lengths, name)
    offsets = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64)
    if len(offsets) == 1:
        raise ValueError(
            f"{name} is empty after filtering: no session has 2 or more clicks on items known from training "
            f"(it had {len(events)} rows in {n_sessions_in} sessions)"
        )
    predictions = len(items) - len(offsets) + 1
    log.info("%s: %d events in %d sessions, %d predictions", name, len(items), len(offsets) - 1, predictions)
    return Sessions(items=items, offsets=offsets, times=times)


def _drop_short(
    items: np.ndarray, times: np.ndarray, lengths: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of the sessions with 2 or more clicks (logging what went), and which sessions those are."""
    keep = lengths >= 2
    if not keep.all():
        dropped = (~keep).sum(), len(keep), lengths[~keep].sum()
        log.info("%s: dropped %d of %d sessions shorter than 2 clicks (%d rows)", name, *dropped)
        rows = np.repeat(keep, lengths)
        items, times = items[rows], times[rows]
    return items, times, keep


def _session_starts(sessions: np.ndarray) -> np.ndarray:
    """Row of each session's first event in session-sorted ids."""
    if len(sessions) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], sessions[1:] != sessions[:-1]]))


class NoClickTimesError(ValueError):
    """Sessions without click times where times are needed (the recent-popularity prior)."""


def recent_item_counts(sessions: Sessions | Sequence[Sessions], n_items: int, seconds: float) -> tuple[np.ndarray, int]:
    """Clicks of each item (n_items,) in the sessions that began in the last `seconds` of the data (up to
    its latest click), and how many sessions those are. Several Sessions (items numbered alike) count as one log."""
    parts = [sessions] if isinstance(sessions, Sessions) else list(sessions)
    if any(part.times is None for part in parts):
        raise NoClickTimesError("the recent-popularity prior needs click times; these sessions carry none")
    latest = max(part.times.max() for part in parts if len(part.times))
    counts, n_recent = np.zeros(n_items, dtype=np.int64), 0
    for part in parts:
        recent = part.times[part.offsets[:-1]] >= latest - seconds  # (n_sessions,)
        items = part.items[np.repeat(recent, part.lengths)]
        counts += np.bincount(items, minlength=n_items + 1)[1 : n_items + 1]
        n_recent += int(recent.sum())
    return counts, n_recent
