"""What a click log merges without a word unless counted: exact duplicate rows, and session ids reused long after
their first use (their clicks become one session). Both are counted and logged, never changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_REUSE_GAP = 86_400.0  # seconds: a pause of a day inside one session id is most likely a reused id


@dataclass(frozen=True)
class Merged:
    """Counts of a log sorted by session, then time."""

    duplicate_rows: int  # rows equal in session, item and time to an earlier row
    long_sessions: int  # sessions whose first and last clicks lie more than the gap apart
    paused_sessions: int  # sessions with a pause longer than the gap between two clicks


def count_merged(session: np.ndarray, item: np.ndarray, time: np.ndarray, gap: float | None) -> Merged:
    """Duplicate rows and sessions spanning more than ``gap`` seconds (None: not counted) in sorted columns."""
    same_session = session[1:] == session[:-1]
    tie = same_session & (time[1:] == time[:-1])  # rows equal to the previous in session and time
    duplicates = 0
    if tie.any():
        # Equal (session, time) rows are contiguous once sorted: only those rows can be duplicates.
        rows = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
        duplicates = int(pd.DataFrame({"s": session[rows], "i": item[rows], "t": time[rows]}).duplicated().sum())
    if gap is None or len(session) == 0:
        return Merged(duplicates, 0, 0)
    starts = np.flatnonzero(np.r_[True, ~same_session])
    spans = np.maximum.reduceat(time, starts) - np.minimum.reduceat(time, starts)
    paused = np.r_[False, same_session & (np.diff(time) > gap)]
    return Merged(duplicates, int(np.count_nonzero(spans > gap)), int(np.unique(session[paused]).size))


def log_merged(merged: Merged, source: str, gap: float | None, split_hint: str) -> None:
    """One warning line for duplicate rows, one for sessions across the gap with ``split_hint`` (how to cut them)."""
    if merged.duplicate_rows:
        log.warning(
            "%s: %d exact duplicate rows (the same session, item and time as an earlier row) are kept as repeated "
            "clicks; remove them from the log if they are not",
            source,
            merged.duplicate_rows,
        )
    if merged.long_sessions:
        log.warning(
            "%s: %d sessions span more than %g s from first to last click, %d of them with a pause longer than that "
            "between two clicks (a session id used again later?); each stays one session: %s",
            source,
            merged.long_sessions,
            gap,
            merged.paused_sessions,
            split_hint,
        )
