"""The cleaning steps of the published protocols: repeated clicks, short sessions, rare items; each one logged."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from lstm_rec.prepare.events import Events, PrepareError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """What one filtering step left: its name and the events, sessions and items after it."""

    name: str
    events: int
    sessions: int
    items: int

    @classmethod
    def after(cls, name: str, events: Events) -> Step:
        return cls(name, len(events), events.n_sessions, events.n_items)


def _logged(name: str, before: Step, events: Events, steps: list[Step]) -> Events:
    """Record and log what step ``name`` removed; raise if it removed everything."""
    after = Step.after(name, events)
    steps.append(after)
    log.info(
        "%s: removed %d events, %d sessions, %d items (left: %d events, %d sessions, %d items)",
        name,
        before.events - after.events,
        before.sessions - after.sessions,
        before.items - after.items,
        after.events,
        after.sessions,
        after.items,
    )
    if after.events == 0:
        raise PrepareError(
            f"nothing is left after '{name}': it removed the last {before.events:,} events "
            f"({before.sessions:,} sessions, {before.items:,} items); the input had {steps[0].events:,} events in "
            f"{steps[0].sessions:,} sessions on {steps[0].items:,} items. Lower the threshold in dataset.protocol, "
            "or check the input"
        )
    return events


def drop_consecutive_duplicates(events: Events) -> Events:
    """Keep the first of clicks that repeat the previous item of their session (i,i,j -> i,j)."""
    repeat = (events.session[1:] == events.session[:-1]) & (events.item[1:] == events.item[:-1])
    return events.take(~np.r_[False, repeat])


def drop_short_sessions(events: Events, min_length: int) -> Events:
    """Drop the sessions with fewer than ``min_length`` clicks."""
    return events.take(np.repeat(events.lengths >= min_length, events.lengths))


def drop_rare_items(events: Events, min_support: int) -> Events:
    """Drop the clicks on items with fewer than ``min_support`` clicks."""
    return events.take((events.item_support >= min_support)[events.item])


def clean(
    events: Events, dedup: str, min_session_length: int, min_item_support: int, iterate_until_stable: bool
) -> tuple[Events, list[Step]]:
    """Deduplicate, drop short sessions, then rare items and the sessions they leave short (until stable if asked)."""
    steps = [Step.after("input", events)]
    if dedup == "consecutive":
        events = _logged("repeated clicks", steps[-1], drop_consecutive_duplicates(events), steps)
    session_step = f"sessions shorter than {min_session_length}"
    events = _logged(session_step, steps[-1], drop_short_sessions(events, min_session_length), steps)
    for passes in itertools.count(1):
        suffix = f" (pass {passes})" if iterate_until_stable else ""
        before = len(events)
        item_step = f"items with fewer than {min_item_support} clicks{suffix}"
        events = _logged(item_step, steps[-1], drop_rare_items(events, min_item_support), steps)
        events = _logged(session_step + suffix, steps[-1], drop_short_sessions(events, min_session_length), steps)
        if not iterate_until_stable or len(events) == before:
            break
    return events, steps
