"""Read click logs (CSV, TSV or Parquet) into a validated, sorted event frame."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lstm_rec.data.quality import DEFAULT_REUSE_GAP, count_merged, log_merged
from lstm_rec.data.readable import COMPRESSIONS, DataFileError, check_text_file, find_bad_utf8
from lstm_rec.data.sessions import ITEM, SESSION, TIME, is_sorted, sort_events

log = logging.getLogger(__name__)

TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
# Numeric times: units per second. auto tells Unix seconds, milliseconds, microseconds and nanoseconds apart by size.
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
# Coarser units, only when named (times counted in minutes, hours or days): seconds per unit.
COARSE_UNITS = {"min": 60.0, "h": 3600.0, "d": 86400.0}
# Unix seconds below this are before the year 5138: larger numbers are read as a finer unit (below 1e14 ms, ...).
SECONDS_BELOW = 1e11
# A latest click more than this many seconds after now is a misread unit (or date-time numbers): warned about.
FUTURE_SLACK = 366 * 86_400.0
# Canonical decimal integers that may fit int64: text ids like these become integers when all of a column are.
INTEGER_ID = r"^(0|-?[1-9][0-9]{0,18})$"

SPLIT_HINT = (
    "to cut sessions at pauses, prepare the log with scripts/prepare_data.py dataset=generic "
    "dataset.reader.session_col=null dataset.reader.user_col={session_col} dataset.reader.session_gap=SECONDS"
)

__all__ = [
    "COARSE_UNITS",
    "TIME_UNITS",
    "DataFileError",
    "check_time_unit",
    "file_format",
    "is_id_type",
    "median_magnitude",
    "read_events",
    "seconds_of",
    "time_unit_of",
    "unit_of_magnitude",
]


def file_format(path: Path) -> str:
    """The suffix that names a file's format, past any compression suffix: "data.csv.gz" -> ".csv"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def read_events(
    path: str | Path,
    role: str,
    session_col: str = "SessionId",
    item_col: str = "ItemId",
    time_col: str = "Time",
    sep: str | None = None,
    reuse_gap: float | None = DEFAULT_REUSE_GAP,
    time_unit: str = "auto",
    unit_key: str = "data.time_unit",
) -> pd.DataFrame:
    """Read one click log into columns session, item, time (float seconds), sorted by session then time.

    Args:
        path: a .csv, .tsv/.txt (optionally compressed) or .parquet file.
        role: the config key that named the file (e.g. ``data.train``), quoted in errors.
        sep: column separator of a text file; None picks it from the extension.
        reuse_gap: seconds; sessions spanning more are counted and logged (None: not counted), as are
            exact duplicate rows.
        time_unit: the unit of numeric times: s, ms, us, ns, min, h or d, or auto (time_unit_of: s, ms, us or ns by
            their size; logged when not seconds). Timestamp and date columns carry their own unit. The frame's
            ``attrs["time_unit"]`` holds the unit the numbers were read in (None for a timestamp column).
        unit_key: the config key that set `time_unit`, named in errors and in the log.
    """
    check_time_unit(time_unit, unit_key)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role}: no file at '{path}'; set {role}=PATH to an existing click log")
    suffix = file_format(path)
    columns = [session_col, item_col, time_col]
    if suffix in PARQUET_SUFFIXES:
        frame = _read_parquet(path, role, columns)
    elif suffix in TEXT_SEPARATORS or sep is not None:
        frame = _read_text(path, role, columns, sep if sep is not None else TEXT_SEPARATORS[suffix])
    else:
        raise DataFileError(
            f"{role}: cannot tell the format of '{path}'; expected .csv, .tsv, .txt or .parquet "
            "(or set data.sep for another text format)"
        )
    if frame.empty:
        raise DataFileError(f"{role}: '{path}' has no rows")
    frame = frame.rename(columns={session_col: SESSION, item_col: ITEM, time_col: TIME})
    _check_missing(frame, path, role, {SESSION: session_col, ITEM: item_col, TIME: time_col})
    frame[TIME], unit = _numeric_time(frame[TIME], path, role, time_col, time_unit, unit_key)
    log.info("%s: read %d rows from %s", role, len(frame), path)
    frame = frame if _is_sorted(frame) else sort_events(frame)
    columns = (frame[SESSION].to_numpy(), frame[ITEM].to_numpy(), frame[TIME].to_numpy())
    hint = SPLIT_HINT.format(session_col=session_col)
    log_merged(count_merged(*columns, reuse_gap), f"{role} '{path}'", reuse_gap, hint)
    frame.attrs["time_unit"] = unit
    return frame


def check_time_unit(time_unit: str, key: str = "data.time_unit") -> None:
    if time_unit != "auto" and time_unit not in TIME_UNITS and time_unit not in COARSE_UNITS:
        units = ["auto", *TIME_UNITS, *COARSE_UNITS]
        raise ValueError(f"{key} must be one of {units} (the unit of numeric times), got {time_unit!r}")


def seconds_of(numbers: Any, unit: str) -> Any:
    """Numeric times in `unit` as seconds: divided by the units per second (exact for whole milliseconds, ...), or
    multiplied by the seconds per unit (min, h, d)."""
    if unit in COARSE_UNITS:
        return numbers * COARSE_UNITS[unit]
    return numbers if unit == "s" else numbers / TIME_UNITS[unit]


def time_unit_of(times: np.ndarray) -> str:
    """The unit that makes numeric times Unix seconds, by their size: the median magnitude below 1e11 is seconds
    (before the year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds. Times counted from
    another origin (seconds since the log began, ...) are small, so they read as seconds."""
    return unit_of_magnitude(median_magnitude(times))


def median_magnitude(times: np.ndarray) -> float:
    """The median of the times' absolute values (0 for none): what time_unit_of decides by."""
    return float(np.median(np.abs(times))) if len(times) else 0.0


def unit_of_magnitude(magnitude: float) -> str:
    """time_unit_of's rule for a median magnitude already found."""
    for unit, per_second in TIME_UNITS.items():
        if magnitude < SECONDS_BELOW * per_second:
            return unit
    return "ns"


def _is_sorted(frame: pd.DataFrame) -> bool:
    """True when numeric session ids are in sort_events' order already (prepared files are): no sort needed."""
    session, time = frame[SESSION].to_numpy(), frame[TIME].to_numpy()
    return pd.api.types.is_numeric_dtype(session.dtype) and len(session) > 1 and is_sorted(session, time)


def _missing_columns_error(path: Path, role: str, wanted: list[str], found: list[str]) -> DataFileError:
    missing = [c for c in wanted if c not in found]
    hint = "set data.session_col, data.item_col and data.time_col to the file's column names"
    if len(found) == 1:
        hint += ", or data.sep if the separator is not the file's"
    return DataFileError(f"{role}: '{path}' has no column {missing} (columns found: {found}); {hint}")


def _read_text(path: Path, role: str, columns: list[str], sep: str) -> pd.DataFrame:
    expected = f"a {sep!r}-separated text click log with a header line naming {columns}"
    check_text_file(path, role, expected)
    header = list(_parse(path, role, expected, sep=sep, nrows=0).columns)
    if any(c not in header for c in columns):
        raise _missing_columns_error(path, role, columns, header)
    session_col, item_col, _ = columns
    # Ids are read as text, so "01" and "1" or "NA" stay distinct ids, then become integers where all are.
    frame = _parse(
        path,
        role,
        expected,
        sep=sep,
        usecols=columns,
        dtype={session_col: str, item_col: str},
        keep_default_na=False,
        na_values=[""],
    )[columns]
    for column in (session_col, item_col):
        frame[column] = _integer_ids(frame[column])
    return frame


def _parse(path: Path, role: str, expected: str, **options) -> pd.DataFrame:
    """pandas.read_csv, with its failures on a bad file said as a DataFileError naming the file and role."""
    try:
        return pd.read_csv(path, **options)
    except UnicodeDecodeError as error:
        raise find_bad_utf8(path, role, expected) from error
    except pd.errors.ParserError as error:
        raise DataFileError(f"{role}: '{path}' cannot be parsed ({error}); expected {expected}") from error
    except (OSError, EOFError) as error:  # a compressed file cut short or corrupt
        raise DataFileError(f"{role}: '{path}' cannot be read ({error}); expected {expected}") from error


def _integer_ids(ids: pd.Series) -> pd.Series:
    """Ids as int64 when every one is a canonical integer within int64; otherwise the strings as read."""
    if ids.isna().any() or not ids.str.match(INTEGER_ID).all():
        return ids
    numbers = pd.to_numeric(ids)
    return numbers if numbers.dtype == np.int64 else ids  # past int64 they come back unsigned or float


def _read_parquet(path: Path, role: str, columns: list[str]) -> pd.DataFrame:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise DataFileError(
            f"{role}: '{path}' is not a readable Parquet file ({error}); expected a Parquet file with columns {columns}"
        ) from error
    if any(c not in schema.names for c in columns):
        raise _missing_columns_error(path, role, columns, schema.names)
    _check_parquet_types(path, role, schema, columns)
    table = pq.read_table(path, columns=columns)
    time_col = columns[2]
    if pa.types.is_date(table.schema.field(time_col).type):  # dates as midnight UTC
        table = table.set_column(2, time_col, pc.cast(table[time_col], pa.timestamp("ms")))
    # Numeric columns become pandas columns without a copy, and the decoding buffers go back to the system:
    # after reading, a 30M-click file holds about its columns' size in memory (2.7 times that before).
    frame = table.to_pandas(split_blocks=True, self_destruct=True)[columns]
    del table
    pa.default_memory_pool().release_unused()
    return frame


def _check_parquet_types(path: Path, role: str, schema: pa.Schema, columns: list[str]) -> None:
    """Refuse nested or binary id columns and time columns that hold no kind of number or time."""
    session_col, item_col, time_col = columns
    for name in (session_col, item_col):
        kind = schema.field(name).type
        if not is_id_type(kind):
            raise DataFileError(
                f"{role}: column '{name}' of '{path}' holds {kind} values; expected integer or text ids, one per row"
            )
    kind = schema.field(time_col).type
    if not any(test(kind) for test in _TIME_TYPES):
        raise DataFileError(
            f"{role}: column '{time_col}' of '{path}' holds {kind} values; expected numeric times (e.g. Unix "
            "seconds) or timestamps, one per row; set data.time_col to the right column"
        )


_ID_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
# Booleans pass here to meet the same check as text times (_numeric_time); nested and binary types stop here.
_TIME_TYPES = (
    *_ID_TYPES,
    pa.types.is_timestamp,
    pa.types.is_date,
    pa.types.is_decimal,
    pa.types.is_boolean,
)


def is_id_type(kind: pa.DataType) -> bool:
    """Whether a Parquet column of this type holds one usable id per row: integers, floats or text."""
    flat = kind.value_type if pa.types.is_dictionary(kind) else kind
    return any(test(flat) for test in _ID_TYPES)


def _check_missing(frame: pd.DataFrame, path: Path, role: str, names: dict[str, str]) -> None:
    for column, name in names.items():
        missing = frame[column].isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataFileError(
                f"{role}: column '{name}' of '{path}' is empty or NaN in {missing.sum()} rows, first at data row "
                f"{row + 1}; every row needs a session, an item and a time"
            )


def _numeric_time(
    times: pd.Series, path: Path, role: str, name: str, time_unit: str = "s", unit_key: str = "data.time_unit"
) -> tuple[pd.Series, str | None]:
    """Times as float seconds, and the unit of the numbers read (None for datetimes, which become Unix seconds):
    numbers are in `time_unit` (auto: time_unit_of); text is numbers or, where none of it is, ISO-8601 date-times
    (without a zone: UTC); anything else is an error."""
    if pd.api.types.is_datetime64_any_dtype(times):  # any unit; with a time zone, as UTC
        stamps = times.dt.tz_convert(None) if times.dt.tz is not None else times
        return (stamps - pd.Timestamp(0)).dt.total_seconds(), None
    if pd.api.types.is_bool_dtype(times) or pd.api.types.infer_dtype(times, skipna=True) == "boolean":
        numbers = pd.Series(np.nan, index=times.index)  # True is not a time, whatever numpy says
    elif pd.api.types.is_numeric_dtype(times):
        numbers = times if times.dtype == np.float64 else times.astype(np.float64)  # no copy of float seconds
    else:
        numbers = pd.to_numeric(times, errors="coerce")
        if numbers.isna().all():  # text with no number in it: ISO-8601 date-times?
            seconds = iso_seconds(times)
            if seconds.notna().any():
                _check_parsed(seconds.isna().to_numpy(), times, path, role, name)
                return seconds, None
    values = numbers.to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = times.iloc[row].item() if isinstance(times.iloc[row], np.generic) else times.iloc[row]
        if isinstance(value, str) and (~bad).any() and _is_date_time(value):  # a date-time among numbers
            number = times.iloc[int(np.flatnonzero(~bad)[0])]
            raise DataFileError(
                f"{role}: column '{name}' of '{path}' mixes numbers (e.g. {number!r}) and ISO-8601 date-times (data "
                f"row {row + 1} has {value!r}); every row needs a time in one form"
            )
        raise DataFileError(
            f"{role}: column '{name}' of '{path}' must hold finite numeric times (e.g. Unix seconds) or ISO-8601 "
            f"date-times; data row {row + 1} has {value!r}; set data.time_col to the right column"
        )
    numbers = numbers if numbers.dtype == np.float64 else numbers.astype(np.float64)
    magnitude, unit = math.nan, time_unit
    if time_unit == "auto":  # decided by the median magnitude, which the log line below gives too
        magnitude = median_magnitude(values)
        unit = unit_of_magnitude(magnitude)
    seconds = seconds_of(numbers, unit)
    latest = float(seconds.max())
    if time_unit == "auto" and unit != "s":
        year = 1970 + magnitude / 31_556_952
        log.info(
            "%s: column '%s' holds numbers around %.3g, as Unix seconds the year %.0f: read as %s, Unix %s, from %s "
            "to %s (%s=auto; set %s=s to read them as seconds)",
            role, name, magnitude, year, unit, _UNIT_NAMES[unit], _utc(seconds.min()), _utc(latest), unit_key,
            unit_key,
        )  # fmt: skip
    if latest > datetime.now(timezone.utc).timestamp() + FUTURE_SLACK:
        log.warning(
            "%s: column '%s' read as %s puts its latest click at %s, in the future: set %s to the times' unit "
            "(%s), or convert date-time numbers such as 20150501103000 to Unix times or ISO-8601 text",
            role, name, _UNIT_NAMES.get(unit, unit), _utc(latest), unit_key, ", ".join([*TIME_UNITS, *COARSE_UNITS]),
        )  # fmt: skip
    return seconds, unit


def _utc(seconds: float) -> str:
    """A Unix time as a UTC date and time, e.g. '2015-05-01 10:00:00 UTC' (for the log); its year past 9999."""
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"the year {1970 + seconds / 31_556_952:.0f}"


_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_UNIT_NAMES |= {"min": "minutes", "h": "hours", "d": "days"}


def iso_seconds(texts: pd.Series) -> pd.Series:
    """Unix seconds of ISO-8601 date-time text (without a zone: UTC), NaN where a value is not one: the one reading of
    date-time text of `data=files` and of prepare_data's generic logs."""
    stamps = pd.to_datetime(texts, utc=True, format="ISO8601", errors="coerce")
    return (stamps.dt.tz_convert(None) - pd.Timestamp(0)).dt.total_seconds()


def _is_date_time(text: str) -> bool:
    return bool(iso_seconds(pd.Series([text])).notna().iloc[0])


def _check_parsed(bad: np.ndarray, times: pd.Series, path: Path, role: str, name: str) -> None:
    """A column of date-time text must be all date-times: the first row that is not is named."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFileError(
            f"{role}: column '{name}' of '{path}' holds ISO-8601 date-times (e.g. {times[~bad].iloc[0]!r}), but data "
            f"row {row + 1} has {times.iloc[row]!r}; every row needs a date-time in the same form, or a number"
        )
