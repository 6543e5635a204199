"""Built-in synthetic click sessions with planted sequential structure and Zipf-like popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lstm_rec.data.sessions import ITEM, SESSION, TIME


def generate_events(
    n_sessions: int = 20_000,
    n_items: int = 1_000,
    mean_length: float = 6.0,
    max_length: int = 60,
    n_successors: int = 4,
    follow_prob: float = 0.7,
    repeat_prob: float = 0.1,
    zipf_exponent: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Generate a click log deterministically from `seed`.

    Each item has `n_successors` fixed likely next items (drawn uniformly, chosen with
    decreasing probability). After each click the next one follows a successor of the current
    item with `follow_prob`, re-clicks an earlier item of the session with `repeat_prob`, and is
    otherwise drawn from the Zipf popularity. A model of the sequence can predict much of the
    log; popularity cannot. Session lengths are 2 plus a geometric draw, capped at `max_length`.

    Returns:
        A frame with columns session, item, time (seconds; sessions start one minute apart).
    """
    _check(n_sessions, n_items, mean_length, max_length, n_successors, follow_prob, repeat_prob)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_exponent
    popularity = rng.permutation(popularity / popularity.sum())
    successors = rng.choice(n_items, size=(n_items, n_successors))  # uniform: structure popularity misses
    successor_weights = 0.5 ** np.arange(n_successors)
    successor_weights /= successor_weights.sum()

    lengths = np.minimum(2 + rng.geometric(1.0 / (mean_length - 1.0), size=n_sessions) - 1, max_length)
    clicks = np.empty((n_sessions, max_length), dtype=np.int64)  # (S, max_length)
    clicks[:, 0] = rng.choice(n_items, size=n_sessions, p=popularity)
    for step in range(1, int(lengths.max())):
        kind = rng.random(n_sessions)
        followed = successors[clicks[:, step - 1], rng.choice(n_successors, size=n_sessions, p=successor_weights)]
        repeated = clicks[np.arange(n_sessions), rng.integers(0, step, size=n_sessions)]
        fresh = rng.choice(n_items, size=n_sessions, p=popularity)
        clicks[:, step] = np.where(
            kind < follow_prob, followed, np.where(kind < follow_prob + repeat_prob, repeated, fresh)
        )
    return _events(clicks, lengths)


def _check(
    n_sessions: int,
    n_items: int,
    mean_length: float,
    max_length: int,
    n_successors: int,
    follow_prob: float,
    repeat_prob: float,
) -> None:
    if n_sessions < 1 or n_items < 2 or n_successors < 1 or not 2 <= mean_length <= max_length:
        raise ValueError(
            "synthetic data needs n_sessions >= 1, n_items >= 2, n_successors >= 1 and "
            f"2 <= mean_length <= max_length; got {n_sessions=}, {n_items=}, {n_successors=}, "
            f"{mean_length=}, {max_length=}"
        )
    if follow_prob < 0 or repeat_prob < 0 or follow_prob + repeat_prob > 1:
        raise ValueError(f"follow_prob and repeat_prob must be >= 0 with sum <= 1; got {follow_prob}, {repeat_prob}")


def _events(clicks: np.ndarray, lengths: np.ndarray) -> pd.DataFrame:
    """The event frame of the first `lengths` clicks of each row; sessions start a minute apart, clicks 5 s."""
    in_session = np.arange(clicks.shape[1])[None, :] < lengths[:, None]  # (S, max_length)
    session_ids = np.broadcast_to(np.arange(len(clicks))[:, None], clicks.shape)[in_session]
    positions = np.broadcast_to(np.arange(clicks.shape[1])[None, :], clicks.shape)[in_session]
    return pd.DataFrame(
        {
            SESSION: session_ids + 1,
            ITEM: clicks[in_session] + 1,
            TIME: 1.7e9 + 60.0 * session_ids + 5.0 * positions,
        }
    )
