"""Read columns of a large delimited text log with pyarrow; a bad line becomes an error naming it."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv

from lstm_rec.data.readable import check_text_file, find_bad_utf8
from lstm_rec.prepare.events import PrepareError

log = logging.getLogger(__name__)

ROLE = "input"  # the config key that names raw logs, quoted in errors about a file that cannot be read

_BLOCK_SIZE = 16 << 20  # bytes per parsing block: fewer, larger blocks parse faster on few cores


@dataclass(frozen=True)
class Column:
    """One column to read: its name, its Arrow type, and how a valid value looks (for error messages)."""

    name: str
    type: pa.DataType
    expected: str


@dataclass(frozen=True)
class TextLog:
    """A delimited text file of a known layout, quoted in errors."""

    path: Path
    sep: str
    layout: str
    # names given to the fields; None takes them from the header line. Blank names stand for the empty fields of a
    # separator read as two (ml-1m's "::" read at ":"), which errors do not count.
    names: list[str] | None = None
    header: bool = True  # whether line 1 is a header (skipped when `names` are given)

    @property
    def header_lines(self) -> int:
        return 1 if self.header else 0

    def read_options(self, use_threads: bool = True) -> csv.ReadOptions:
        skip = 1 if self.header and self.names else 0
        return csv.ReadOptions(column_names=self.names, skip_rows=skip, use_threads=use_threads, block_size=_BLOCK_SIZE)

    def label(self, name: str) -> str:
        """How errors name a column: by position in a headerless file (among the named fields), by name otherwise."""
        if self.header:
            return f"column '{name}'"
        return f"field {[field for field in self.names if field.strip()].index(name) + 1} ({name})"


def check_file(path: Path) -> None:
    """Raise a message that says what to set when ``path`` is not a file."""
    if not path.is_file():
        raise FileNotFoundError(f"input: no file at '{path}'; set input=PATH (or input=[PATH,PATH]) to the raw log")


def first_line(path: Path, layout: str = "a click log") -> str:
    """The file's first line (decompressed, without a UTF-8 byte-order mark or its line break).

    Raises PrepareError naming the file when it is empty, compressed unlike its name, binary or not UTF-8
    text in its first 64 KiB (lstm_rec.data.readable), expecting ``layout``.
    """
    check_file(path)
    head = check_text_file(path, ROLE, layout, PrepareError)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")


def header_of(log_file: TextLog, wanted: list[str]) -> list[str]:
    """The header line's names; raises if one of ``wanted`` is missing."""
    header = first_line(log_file.path, log_file.layout).split(log_file.sep)
    missing = [name for name in wanted if name not in header]
    if missing:
        raise PrepareError(
            f"{log_file.path}: line 1 has no column {missing} (found {header}); expected the header of "
            f"{log_file.layout}"
        )
    return header


def read_columns(log_file: TextLog, columns: list[Column]) -> pa.Table:
    """Read ``columns`` with their types, multithreaded; raises PrepareError naming the line of a bad value."""
    check_file(log_file.path)
    read_options = log_file.read_options()
    parse_options = csv.ParseOptions(delimiter=log_file.sep)
    # Only an empty field is missing: "NA" or "null" may be real ids, and in a number column they are errors.
    convert_options = csv.ConvertOptions(
        column_types={c.name: c.type for c in columns},
        include_columns=[c.name for c in columns],
        null_values=[""],
        strings_can_be_null=True,
    )
    try:
        table = csv.read_csv(log_file.path, read_options, parse_options, convert_options)
    except pa.ArrowInvalid as error:
        raise _diagnose(log_file, columns, error) from error
    for column in columns:
        _check_filled(log_file, table.column(column.name), column)
    log.info("read %d rows of %s", table.num_rows, log_file.path)
    return table


def _check_filled(log_file: TextLog, values: pa.ChunkedArray, column: Column) -> None:
    if values.null_count:
        row = pc.index(pc.is_null(values), True).as_py()
        raise PrepareError(
            f"{log_file.path}, line {row + 1 + log_file.header_lines}: {log_file.label(column.name)} is empty "
            f"({values.null_count} empty in all); every row needs {column.expected}"
        )


def unreadable(log_file: TextLog, error: pa.ArrowException) -> PrepareError:
    """The PrepareError for a pyarrow failure that is the file's fault, not a value's: bytes that are not UTF-8."""
    if "UTF8" in str(error) or "UTF-8" in str(error):
        return find_bad_utf8(log_file.path, ROLE, log_file.layout, PrepareError)
    return PrepareError(f"{ROLE}: '{log_file.path}' cannot be read as {log_file.layout} ({error})")


def _diagnose(log_file: TextLog, columns: list[Column], error: pa.ArrowInvalid) -> PrepareError:
    """Find the line behind pyarrow's error: bytes that are not UTF-8, a row with the wrong number of fields, or a
    value of the wrong kind."""
    if "UTF8" in str(error):
        return unreadable(log_file, error)
    try:
        if "Expected" in str(error) and "columns" in str(error):
            found = _first_bad_row(log_file)
            if found is not None:
                return found
        found = _first_bad_value(log_file, columns)
    except pa.ArrowException as again:  # the diagnosis read failed too: the file, not a value, is at fault
        return unreadable(log_file, again)
    return found if found is not None else unreadable(log_file, error)


def _first_bad_row(log_file: TextLog) -> PrepareError | None:
    bad_rows: list[csv.InvalidRow] = []

    def stop_at_first(row: csv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    read_options = log_file.read_options(use_threads=False)
    parse_options = csv.ParseOptions(delimiter=log_file.sep, invalid_row_handler=stop_at_first)
    with contextlib.suppress(pa.ArrowInvalid):  # the handler stopped the read at the first bad row
        csv.read_csv(log_file.path, read_options, parse_options)
    if not bad_rows:
        return None
    row = bad_rows[0]
    return PrepareError(
        f"{log_file.path}, line {row.number}: {row.actual_columns} fields separated by {log_file.sep!r} where "
        f"{row.expected_columns} are expected ({log_file.layout}); the line is {row.text[:200]!r}"
    )


def _first_bad_value(log_file: TextLog, columns: list[Column]) -> PrepareError | None:
    """Stream the columns as text and try each block's conversion; bisect a failing block to its first bad value."""
    read_options = log_file.read_options(use_threads=False)
    convert_options = csv.ConvertOptions(
        column_types={c.name: pa.string() for c in columns}, include_columns=[c.name for c in columns]
    )
    reader = csv.open_csv(log_file.path, read_options, csv.ParseOptions(delimiter=log_file.sep), convert_options)
    rows_before = 0
    for batch in reader:
        for column in columns:
            bad = first_unconvertible(batch.column(column.name), column.type)
            if bad is not None:
                line = rows_before + bad + 1 + log_file.header_lines
                value = batch.column(column.name)[bad].as_py()
                hint = " (it looks like a header; this format has none)" if line == 1 and not log_file.header else ""
                return PrepareError(
                    f"{log_file.path}, line {line}: {log_file.label(column.name)} is {value!r}{hint}; expected "
                    f"{column.expected} ({log_file.layout})"
                )
        rows_before += batch.num_rows
    return None


def _converts(values: pa.Array, to: pa.DataType) -> bool:
    try:
        pc.cast(pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values), to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def first_unconvertible(values: pa.Array, to: pa.DataType) -> int | None:
    """Index of the first value that does not convert to ``to`` (empty text counts as missing, not bad)."""
    if pa.types.is_string(to) or pa.types.is_dictionary(to) or _converts(values, to):
        return None
    low, high = 0, len(values)  # the first bad value lies in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        if _converts(values.slice(low, middle - low), to):
            low = middle
        else:
            high = middle
    return low
