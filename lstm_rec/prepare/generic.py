"""Any click log (CSV, TSV, Parquet, compressed text) by a column mapping, with optional gap sessions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

from lstm_rec.data.io import (
    INTEGER_ID,
    PARQUET_SUFFIXES,
    TEXT_SEPARATORS,
    TIME_UNITS,
    check_time_unit,
    file_format,
    is_id_type,
    iso_seconds,
    median_magnitude,
    seconds_of,
    unit_of_magnitude,
)
from lstm_rec.data.quality import DEFAULT_REUSE_GAP
from lstm_rec.prepare.events import Events, PrepareError, encode, report_merged, sessions_from_gaps
from lstm_rec.prepare.textfile import (
    Column,
    TextLog,
    check_file,
    header_of,
    read_columns,
    unreadable,
)

log = logging.getLogger(__name__)


class GenericLog:
    """A click log with a header (or Parquet): the columns named here, everything else ignored.

    Recipe ``generic`` applies the protocol set in its config. Without a session column, each
    ``user_col`` value's clicks in time order are cut into sessions at pauses longer than
    ``session_gap`` seconds. Numeric times are in ``time_unit`` (auto: by their size, as data.time_unit); text
    times are ISO-8601 unless ``time_format`` (strptime codes) says otherwise; times without a zone are taken as
    UTC. Exact duplicate rows, and sessions of a session column that span more than ``reuse_gap`` seconds, are
    counted and logged.
    """

    def __init__(
        self,
        session_col: str | None = "SessionId",
        item_col: str = "ItemId",
        time_col: str = "Time",
        time_unit: str = "auto",
        time_format: str | None = None,
        user_col: str | None = None,
        session_gap: float | None = None,
        sep: str | None = None,
        reuse_gap: float | None = DEFAULT_REUSE_GAP,
    ) -> None:
        if (session_col is None) == (user_col is None or session_gap is None):
            raise PrepareError(
                "dataset.reader: set session_col for a log with session ids, or session_col=null with user_col and "
                f"session_gap (seconds) to cut sessions from pauses; got session_col={session_col}, "
                f"user_col={user_col}, session_gap={session_gap}"
            )
        try:
            check_time_unit(time_unit, "dataset.reader.time_unit")
        except ValueError as error:
            raise PrepareError(str(error)) from None
        self.session_col, self.item_col, self.time_col = session_col, item_col, time_col
        self.time_unit, self.time_format = time_unit, time_format
        self.user_col, self.session_gap, self.sep = user_col, session_gap, sep
        self.reuse_gap = reuse_gap

    @property
    def key_col(self) -> str:
        """The column that groups clicks: the session id, or the user whose clicks gaps cut."""
        return self.session_col if self.session_col is not None else self.user_col

    def read(self, paths: list[Path]) -> Events:
        tables = [self._read_one(path) for path in paths]
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise PrepareError(
                f"input files {paths} differ in column types ({error}); give files of one log"
            ) from error
        time = table["time"].to_numpy()
        if self.session_col is not None:
            events = encode(table["key"], table["item"], time)
            cut = f"set dataset.reader.session_col=null user_col={self.session_col} session_gap=SECONDS to cut them"
            report_merged(events, "input " + ", ".join(f"'{p}'" for p in paths), self.reuse_gap, cut)
            return events
        order, session = sessions_from_gaps(_codes(table["key"]), time, float(self.session_gap))
        log.info("%d sessions from pauses over %g s in each %s's clicks", session[-1], self.session_gap, self.user_col)
        return encode(session, table["item"].take(order), time[order])

    def _read_one(self, path: Path) -> pa.Table:
        """A table of columns key, item, time (float seconds) from one file."""
        check_file(path)
        wanted = [self.key_col, self.item_col, self.time_col]
        if file_format(path) in PARQUET_SUFFIXES and self.sep is None:
            table, where = _read_parquet(path, wanted), "row"
        else:
            table, where = self._read_text(path, wanted), "line"
            for name in (self.key_col, self.item_col):  # ids are read as text, then integers where all are
                table = table.set_column(table.schema.get_field_index(name), name, _integer_if_all(table[name]))
        offset = 1 if where == "row" else 2  # data row 0 is line 2, after the header
        time = _to_seconds(table[self.time_col], path, self, where, offset)
        return pa.table({"key": table[self.key_col], "item": table[self.item_col], "time": time})

    def _read_text(self, path: Path, wanted: list[str]) -> pa.Table:
        sep = self.sep if self.sep is not None else TEXT_SEPARATORS.get(file_format(path))
        if sep is None:
            raise PrepareError(
                f"{path}: cannot tell the format from its name; expected .csv, .tsv, .txt or .parquet (optionally "
                "compressed, e.g. .csv.gz), or set dataset.reader.sep"
            )
        layout = f"a {sep!r}-separated log with a header naming {wanted}"
        log_file = TextLog(path, sep, layout)
        header_of(log_file, wanted)
        try:
            inferred = csv.open_csv(
                path,
                log_file.read_options(),
                csv.ParseOptions(delimiter=sep),
                csv.ConvertOptions(include_columns=wanted),
            ).schema
        except pa.ArrowInvalid as error:
            raise unreadable(log_file, error) from error
        columns = [Column(name, pa.string(), "an id") for name in (self.key_col, self.item_col)]
        time_type = pa.string() if self.time_format else inferred.field(self.time_col).type
        if pa.types.is_integer(time_type):
            time_type = pa.float64()  # a later 1.5 still reads
        columns.append(Column(self.time_col, time_type, "a time like the first rows' (a number or a date-time)"))
        return read_columns(log_file, columns)


def _codes(keys: pa.ChunkedArray) -> np.ndarray:
    """int64 keys of user ids: the ids themselves when integers, else dictionary codes."""
    if pa.types.is_integer(keys.type):
        return keys.to_numpy().astype(np.int64, copy=False)
    return keys.combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)


def _integer_if_all(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text ids as int64 when every one is a plain integer within int64; else the text ("01" is not "1")."""
    if not pc.all(pc.match_substring_regex(ids, INTEGER_ID)).as_py():
        return ids
    try:
        return pc.cast(ids, pa.int64())
    except pa.ArrowInvalid:  # past int64
        return ids


def _read_parquet(path: Path, wanted: list[str]) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise PrepareError(
            f"input: '{path}' is not a readable Parquet file ({error}); expected a Parquet file with columns {wanted}"
        ) from error
    names = schema.names
    missing = [name for name in wanted if name not in names]
    if missing:
        raise PrepareError(
            f"{path} has no column {missing} (columns found: {names}); set dataset.reader.session_col, "
            "item_col, time_col (or user_col) to its column names"
        )
    for name in wanted[:2]:  # ids: no lists, structs or bytes
        kind = schema.field(name).type
        if not is_id_type(kind):
            raise PrepareError(
                f"input: column '{name}' of '{path}' holds {kind} values; expected integer or text ids, one per row"
            )
    table = pq.read_table(path, columns=wanted)
    for name in wanted:
        if table[name].null_count:
            row = pc.index(pc.is_null(table[name]), True).as_py()
            raise PrepareError(f"{path}, row {row + 1}: column '{name}' is empty; every row needs a value")
    return table


def _to_seconds(times: pa.ChunkedArray, path: Path, reader: GenericLog, where: str, offset: int) -> np.ndarray:
    """Float Unix seconds from numbers in ``time_unit``, timestamps, or text (ISO-8601 or ``time_format``)."""
    if pa.types.is_string(times.type) or pa.types.is_large_string(times.type):
        return _text_seconds(times, path, reader, where, offset)
    if pa.types.is_timestamp(times.type):
        return _timestamp_seconds(times)
    if pa.types.is_date(times.type):
        return _timestamp_seconds(pc.cast(times, pa.timestamp("s")))
    if pa.types.is_integer(times.type) or pa.types.is_floating(times.type):
        numbers = pc.cast(times, pa.float64()).to_numpy()
        unit = reader.time_unit
        if unit == "auto":
            magnitude = median_magnitude(numbers[np.isfinite(numbers)])
            unit = unit_of_magnitude(magnitude)
            if unit != "s":
                log.info(
                    "%s: column '%s' holds numbers around %.3g: read as %s (dataset.reader.time_unit=auto, by their "
                    "size; set dataset.reader.time_unit=s to read them as seconds)",
                    path, reader.time_col, magnitude, unit,
                )  # fmt: skip
        return seconds_of(numbers, unit)
    raise PrepareError(
        f"{path}: column '{reader.time_col}' holds {times.type} values; expected numbers (in "
        "dataset.reader.time_unit), timestamps or date-time text"
    )


def _timestamp_seconds(times: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Float Unix seconds of a timestamp column, in its own unit."""
    return pc.cast(times, pa.int64()).to_numpy() / TIME_UNITS[times.type.unit]


# Arrow's casts of ISO-8601 text, tried in turn: the coarsest unit that keeps the text's fraction of a second, the
# text without a zone (taken as UTC) or with one.
_ISO_CASTS = [pa.timestamp(unit, tz=zone) for unit in ("ms", "us", "ns") for zone in (None, "UTC")]


def _text_seconds(times: pa.ChunkedArray, path: Path, reader: GenericLog, where: str, offset: int) -> np.ndarray:
    """Seconds of date-time text: ISO-8601 as `data=files` reads it (lstm_rec.data.io.iso_seconds; Arrow's cast
    first, which is faster and leaner on a large log), or in the strptime format ``time_format``."""
    values = times.combine_chunks()
    if reader.time_format is None:
        for target in _ISO_CASTS:
            try:
                return _timestamp_seconds(pc.cast(values, target))
            except pa.ArrowInvalid:
                continue
        seconds = iso_seconds(values.to_pandas()).to_numpy(np.float64)  # ISO-8601 forms the casts do not read
        bad = np.isnan(seconds) & values.is_valid().to_numpy(zero_copy_only=False)
        if not bad.any():
            return seconds
        row = int(np.flatnonzero(bad)[0])
        expected = "a number or an ISO-8601 date-time; set dataset.reader.time_format for another layout"
    else:
        parsed = pc.strptime(values, format=reader.time_format, unit="ms", error_is_null=True)
        bad = pc.and_(pc.is_null(parsed), pc.is_valid(values))
        if not pc.any(bad).as_py():
            return _timestamp_seconds(parsed)
        row = pc.index(bad, True).as_py()
        expected = f"a time in the format {reader.time_format!r} (dataset.reader.time_format)"
    raise PrepareError(
        f"{path}, {where} {row + offset}: column '{reader.time_col}' is {values[row].as_py()!r}; expected {expected}"
    )
