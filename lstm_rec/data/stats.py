"""Statistics of session data: lengths, item popularity, repeat clicks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lstm_rec.data.sessions import Sessions


def session_lengths(sessions: Sessions) -> pd.Series:
    """How many sessions have each length (clicks), indexed by length."""
    lengths, counts = np.unique(sessions.lengths, return_counts=True)
    return pd.Series(counts, index=pd.Index(lengths, name="clicks"), name="sessions")


def popularity_curve(sessions: Sessions) -> pd.Series:
    """Clicks of each item, most clicked first, indexed by popularity rank (1 = most clicked)."""
    counts = np.sort(np.bincount(sessions.items)[1:])[::-1]
    counts = counts[counts > 0]
    return pd.Series(counts, index=pd.RangeIndex(1, len(counts) + 1, name="rank"), name="clicks")


def repeat_rates(sessions: Sessions) -> dict[str, float]:
    """Share of clicks (after a session's first) on an item clicked earlier in the session, and right before."""
    session_of = np.repeat(np.arange(sessions.n_sessions), sessions.lengths)
    pairs = pd.DataFrame({"session": session_of, "item": sessions.items})
    not_first = sessions.is_target
    seen_before = pairs.duplicated(["session", "item"]).to_numpy()
    consecutive = np.r_[False, (sessions.items[1:] == sessions.items[:-1]) & (session_of[1:] == session_of[:-1])]
    return {
        "repeat_rate": float(seen_before[not_first].mean()),
        "consecutive_repeat_rate": float(consecutive[not_first].mean()),
    }


def summary(sessions: Sessions) -> dict[str, float]:
    """Events, sessions, items, length quantiles, the top 1% items' share of clicks, and repeat rates."""
    popularity = popularity_curve(sessions)
    top = max(1, len(popularity) // 100)
    return {
        "events": sessions.n_events,
        "sessions": sessions.n_sessions,
        "items": len(popularity),
        "mean_length": float(sessions.lengths.mean()),
        "median_length": float(np.median(sessions.lengths)),
        "top_1pct_items_click_share": float(popularity.iloc[:top].sum() / popularity.sum()),
    } | repeat_rates(sessions)
