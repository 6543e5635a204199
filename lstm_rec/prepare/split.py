"""Time splits of the published protocols: the last days of sessions are held out, unseen items dropped."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np

from lstm_rec.prepare.events import DAY, Events, PrepareError
from lstm_rec.prepare.filters import drop_short_sessions

log = logging.getLogger(__name__)

SPLIT_BY = ("session_end", "session_start")


def iso(seconds: float) -> str:
    """A Unix time as UTC date and time, for logs, messages and stats."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def split_last_days(
    events: Events, cut: float, split_by: str, min_session_length: int, names: tuple[str, str]
) -> tuple[Events, Events]:
    """Training part and held-out part at time ``cut``; ``names`` are theirs, for logs and errors.

    session_end (GRU4Rec, session-rec): sessions whose last click is at or after ``cut`` are held out,
    the others are training. session_start (Hidasi & Czapp 2023): sessions that start at or after
    ``cut`` are held out; training is every click before ``cut``, then its sessions shorter than
    ``min_session_length`` are dropped (sessions across the cut lose their later clicks).
    """
    lengths = events.lengths
    if split_by == "session_end":
        held = np.repeat(events.session_times(np.maximum) >= cut, lengths)
        train, held_out = events.take(~held), events.take(held)
    else:
        held = np.repeat(events.session_times(np.minimum) >= cut, lengths)
        train = drop_short_sessions(events.take(~held & (events.time < cut)), min_session_length)
        held_out = events.take(held)
    log.info("%s | %s: cut at %s by %s: %s | %s", *names, iso(cut), split_by, train.counts(), held_out.counts())
    for part, name in zip((train, held_out), names, strict=True):
        if len(part) == 0:
            raise PrepareError(
                f"{name} is empty after the split {names[0]} | {names[1]} at {iso(cut)} ({split_by}): the data span "
                f"{iso(events.time.min())} to "
                f"{iso(events.time.max())} ({events.counts()}); change dataset.protocol.test_days or valid_days"
            )
    return train, held_out


def drop_unseen(held_out: Events, train: Events, min_session_length: int, name: str) -> Events:
    """Drop held-out clicks on items absent from ``train``, then the held-out sessions left too short."""
    seen = np.bincount(train.item, minlength=len(train.item_ids)) > 0
    known = held_out.take(seen[held_out.item])
    kept = drop_short_sessions(known, min_session_length)
    log.info(
        "%s: removed %d clicks on items not in its training part, then %d sessions shorter than %d (%d clicks): %s",
        name,
        len(held_out) - len(known),
        known.n_sessions - kept.n_sessions,
        min_session_length,
        len(known) - len(kept),
        kept.counts(),
    )
    if len(kept) == 0:
        raise PrepareError(
            f"{name} is empty once clicks on items unseen in its training part and sessions shorter than "
            f"{min_session_length} are dropped (it had {held_out.counts()}); hold out more days "
            "(dataset.protocol.test_days / valid_days)"
        )
    return kept


def day_cut(end: float, days: float) -> float:
    """The time ``days`` before ``end``."""
    return end - days * DAY
