"""Item ids of an input matched in the item index's own type, whatever type the input's reader gave them.

A reader types the ids of each file on its own (text ids become integers only when all of them are), so one
odd id must not make the other ids of a file miss the index. An integer index matches integers, integral
floats and decimal text (``"0189"`` is 189, ``"+7"`` is 7); a text index matches text, and integers as their
decimal text (42 is ``"42"``). An id that cannot take the index's type (``"abc"`` for an integer index, a
bool, a float with a fraction) is unknown. An index of another type (floats) matches ids as they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from lstm_rec.data.readable import DataFileError

log = logging.getLogger(__name__)

# Decimal integer text: optional sign, ASCII digits, leading zeros allowed, no spaces.
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
# An input whose rows are more than this share on item ids unknown to the index is refused (or, for a service
# that cannot refuse, logged as a warning): its ids are most likely of another catalog or another column.
MOST_UNKNOWN = 0.5
EXAMPLES = 5  # unknown ids quoted in a message


def id_kind(ids: np.ndarray) -> str:
    """The type ids are matched in: "integer", "text", or "other" (matched as they are)."""
    if ids.dtype.kind in "iu":
        return "integer"
    if ids.dtype.kind in "OU" and len(ids) and pd.api.types.infer_dtype(ids, skipna=False) == "string":
        return "text"
    return "other"


def index_positions(index: pd.Index, kind: str, ids: np.ndarray) -> np.ndarray:
    """Position in ``index`` (of id type ``kind``) of each of ``ids``, -1 where unknown."""
    if len(ids) == 0 or kind == "other" or id_kind(ids) == kind:
        return index.get_indexer(ids)
    codes, distinct = pd.factorize(ids.astype(object) if ids.dtype.kind == "U" else ids)  # -1: missing
    converted = as_kind(distinct, kind)
    if kind == "integer":
        bounds = np.iinfo(index.dtype)
        converted = [i if i is not None and bounds.min <= i <= bounds.max else None for i in converted]
    fits = np.array([i is not None for i in converted], dtype=bool)
    found = np.full(len(distinct) + 1, -1, dtype=np.int64)  # the extra last entry answers code -1
    if fits.any():
        values = [i for i in converted if i is not None]
        found[:-1][fits] = index.get_indexer(np.array(values, dtype=index.dtype if kind == "integer" else object))
    return found[codes]


def as_kind(values: Sequence[Hashable] | np.ndarray, kind: str) -> list[Hashable | None]:
    """Each value as an id of `kind` ("integer" or "text") by the matching rules above, None where it is not one."""
    return [_as_integer(value) if kind == "integer" else _as_text(value) for value in values]


def _as_integer(value: Hashable) -> int | None:
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value):
        # Past 20 significant digits no integer index can hold it (and int() refuses 4,300 digits).
        return int(value) if len(value.lstrip("+-").lstrip("0")) <= 20 else None
    return None


def _as_text(value: Hashable) -> str | None:
    if isinstance(value, str):
        return str(value)
    integer = _as_integer(value)
    return None if integer is None else str(integer)


def examples(ids: Sequence[Hashable] | np.ndarray, limit: int = EXAMPLES) -> str:
    """A few distinct ids, each shortened, for a message: ['abc', '0x1f', ...]."""
    distinct = pd.unique(np.asarray(ids, dtype=object))
    shown = [repr(i if len(repr(i)) <= 24 else f"{str(i)[:20]}...") for i in map(_plain, distinct[:limit])]
    more = ", ..." if len(distinct) > limit else ""
    return "[" + ", ".join(shown) + more + "]"


def index_description(index_ids: np.ndarray) -> str:
    """What an item index holds, for messages: '2,933 integer ids (e.g. [214507224, ...])'."""
    kind = id_kind(index_ids)
    kind = str(index_ids.dtype) if kind == "other" else kind
    return f"{len(index_ids):,} {kind} ids (e.g. {examples(index_ids[:3], 3)})"


def unknown_summary(
    unknown_ids: np.ndarray | Sequence[Hashable], total: int, index_ids: np.ndarray, noun: str = "rows"
) -> str:
    """'3 of 4 rows (75%) have an item id not in the item index ...': counts, a few ids, the index's type."""
    return (
        f"{len(unknown_ids):,} of {total:,} {noun} ({len(unknown_ids) / max(total, 1):.0%}) have an item id that "
        f"is not in the item index, e.g. {examples(unknown_ids)}; the index holds {index_description(index_ids)}, "
        "and ids are matched in its type"
    )


def warn_unknown(unknown_ids: Sequence[Hashable], total: int, index_ids: np.ndarray) -> None:
    """The scoring side's one line on the unknown ids of a request: counts and a few ids, and when most are
    unknown, what the index holds (ids of another catalog?); a service cannot refuse such requests."""
    if not unknown_ids:
        return
    line = f"skipping {len(unknown_ids)} item ids the model does not know (of {total}): {examples(unknown_ids)}"
    if len(unknown_ids) > MOST_UNKNOWN * total:
        line += (
            f"; MOST ids are unknown: the index holds {index_description(index_ids)}, and ids are matched in its type"
        )
    log.warning(line)


def check_known(source: str, item_ids: np.ndarray, known: np.ndarray, index_ids: np.ndarray) -> None:
    """Raise when more than MOST_UNKNOWN of an input's rows are on unknown items; log a summary when any are.

    Args:
        source: the input, as its role and file: "data.test 'test.csv'".
        item_ids: (n_rows,) the ids as read; known: (n_rows,) bool, whether each is in the index.
    """
    n_unknown = len(known) - int(np.count_nonzero(known))
    if n_unknown == 0:
        return
    summary = unknown_summary(np.asarray(item_ids)[~known], len(known), index_ids)
    if n_unknown > MOST_UNKNOWN * len(known):
        raise DataFileError(
            f"{source}: {summary}. More than {MOST_UNKNOWN:.0%} of rows unknown means another catalog or another "
            "column: give a log of the items the model was trained on, or name its item column (item_col)"
        )
    log.info("%s: %s; those rows are skipped", source, summary)


def _plain(value: Hashable) -> Hashable:
    return value.item() if isinstance(value, np.generic) else value
