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
    """Duplicate rows and sessions spanning more than ``gap`` seconds (None: not counted) in columns sorted by
    session, then time (so a session spans from its first row's time to its last's)."""
    # Rows whose next row has the same session and time: few, so the rest looks at those rows only.
    ties = _same_session(session, np.flatnonzero(time[1:] == time[:-1]))
    duplicates = 0
    if len(ties):
        # Equal (session, time) rows are contiguous once sorted: only those rows can be duplicates.
        rows = np.union1d(ties, ties + 1)
        duplicates = int(pd.DataFrame({"s": session[rows], "i": item[rows], "t": time[rows]}).duplicated().sum())
    if gap is None or len(session) == 0:
        return Merged(duplicates, 0, 0)
    ends = np.append(np.flatnonzero(session[1:] != session[:-1]), len(session) - 1)
    starts = np.append(0, ends[:-1] + 1)
    long_sessions = int(np.count_nonzero(time[ends] - time[starts] > gap))
    if long_sessions == 0:  # no session spans the gap, so none pauses longer
        return Merged(duplicates, 0, 0)
    pauses = _same_session(session, np.flatnonzero(np.diff(time) > gap))
    paused = session[pauses]  # the session of every pause, in session order
    paused_sessions = int(len(paused) > 0) + int(np.count_nonzero(paused[1:] != paused[:-1]))
    return Merged(duplicates, long_sessions, paused_sessions)


def _same_session(session: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Those of ``rows`` whose next row is of the same session."""
    return rows[session[rows] == session[rows + 1]]


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
