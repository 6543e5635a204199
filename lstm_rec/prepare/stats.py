"""Statistics of prepared splits, as JSON and as the dataset tables of the session-based papers."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_rec.prepare.events import DAY, Events
from lstm_rec.prepare.filters import Step
from lstm_rec.prepare.split import iso

# Session-length bins of the distribution: (label, shortest, longest); None = no upper bound.
LENGTH_BINS = [("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4), ("5", 5, 5)]
LENGTH_BINS += [("6-10", 6, 10), ("11-20", 11, 20), ("21-50", 21, 50), (">50", 51, None)]


def split_stats(events: Events) -> dict[str, Any]:
    """Events, sessions, items, next-item predictions, time span and the session-length distribution."""
    lengths = events.lengths
    first, last = float(events.time.min()), float(events.time.max())
    histogram = {
        label: int(np.count_nonzero((lengths >= low) & (lengths <= (high or lengths.max()))))
        for label, low, high in LENGTH_BINS
    }
    return {
        "events": len(events),
        "sessions": len(lengths),
        "items": events.n_items,
        "predictions": len(events) - len(lengths),
        "first": iso(first),
        "last": iso(last),
        "days": round((last - first) / DAY, 2),
        "length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": round(float(lengths.mean()), 3),
            "p90": float(np.percentile(lengths, 90)),
            "max": int(lengths.max()),
        },
        "length_histogram": histogram,
    }


def prepare_stats(
    recipe: str, inputs: list[str], protocol: dict, steps: list[Step], splits: dict[str, Events]
) -> dict[str, Any]:
    """Everything stats.json holds: what was read, how it was filtered, and each split's statistics."""
    return {
        "recipe": recipe,
        "input": inputs,
        "protocol": protocol,
        "filtering": [vars(step) for step in steps],
        "splits": {name: split_stats(events) for name, events in splits.items()},
    }


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |"


def stats_markdown(stats: dict[str, Any]) -> str:
    """stats.json as Markdown tables: filtering, splits (as in the papers' dataset tables), session lengths."""
    splits = stats["splits"]
    lines = [f"# {stats['recipe']}: {', '.join(stats['input'])}", ""]
    lines += ["| step | events | sessions | items |", "|---|---|---|---|"]
    lines += [_row([s["name"], s["events"], s["sessions"], s["items"]]) for s in stats["filtering"]]
    lines += ["", "| split | events | sessions | items | predictions | days | first | last | mean length |"]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for name, s in splits.items():
        cells = [name, s["events"], s["sessions"], s["items"], s["predictions"], s["days"], s["first"], s["last"]]
        lines.append(_row([*cells, s["length"]["mean"]]))
    labels = [label for label, _, _ in LENGTH_BINS]
    lines += ["", "Sessions by length (clicks):", ""]
    lines += ["| split | " + " | ".join(labels) + " | median | p90 | max |", "|---" * (len(labels) + 4) + "|"]
    for name, s in splits.items():
        length = s["length"]
        lines.append(_row([name, *s["length_histogram"].values(), length["median"], length["p90"], length["max"]]))
    settings = ", ".join(f"{key}={value}" for key, value in stats["protocol"].items())
    return "\n".join([*lines, "", f"Protocol: {settings}.", ""])
