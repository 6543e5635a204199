"""Write prepared splits all at once: into a temporary sibling folder, renamed into place when complete."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as csv
import pyarrow.parquet as pq

from lstm_rec.prepare.events import Events, PrepareError

log = logging.getLogger(__name__)

FORMATS = {"parquet": ".parquet", "tsv": ".tsv"}
STATS_FILE = "stats.json"
MARKDOWN_FILE = "stats.md"
_NEW_OUTPUT = "overwrite=true replaces only earlier outputs, so choose a new output=DIR"


def check_output(output: Path, output_format: str, overwrite: bool) -> None:
    """Fail before any work when the output cannot be written as asked: overwrite=true replaces only a folder that
    holds nothing but an earlier prepare_data output (or nothing at all)."""
    if output_format not in FORMATS:
        raise PrepareError(f"output_format must be one of {list(FORMATS)}, got {output_format!r}")
    if not (output.exists() or output.is_symlink()):
        return
    if not overwrite:
        raise PrepareError(f"output: '{output}' exists; choose a new output=DIR, or set overwrite=true to replace it")
    if output.is_symlink():
        raise PrepareError(f"output: '{output}' is a symbolic link; give the folder it points to as output=DIR")
    if not output.is_dir():
        raise PrepareError(f"output: '{output}' exists and is not a prepare_data output (not a folder); {_NEW_OUTPUT}")
    present = list(output.iterdir())
    if present and not (output / STATS_FILE).is_file():
        raise PrepareError(
            f"output: '{output}' exists and is not a prepare_data output (no {STATS_FILE}); {_NEW_OUTPUT}"
        )
    written = set(_written_files(output))
    others = sorted(entry.name for entry in present if entry not in written)
    if others:
        raise PrepareError(
            f"output: '{output}' holds {others} besides an earlier prepare_data output; overwrite=true replaces "
            f"only a folder holding nothing but what prepare_data wrote ({STATS_FILE}, {MARKDOWN_FILE} and the "
            "split files that stats.json lists): move those away, or choose a new output=DIR"
        )


def written_names(output: Path) -> set[str]:
    """The names of the files an earlier prepare_data output in ``output`` holds, read from its stats.json."""
    stats_path = output / STATS_FILE
    if not stats_path.exists():
        return set()
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrepareError(
            f"output: '{stats_path}' is not one that prepare_data wrote ({error}); {_NEW_OUTPUT}"
        ) from error
    splits = stats.get("splits") if isinstance(stats, dict) else None
    if not isinstance(splits, dict) or not isinstance(stats.get("recipe"), str):
        raise PrepareError(
            f"output: '{stats_path}' is not one that prepare_data wrote (no 'splits' mapping and 'recipe'); "
            f"{_NEW_OUTPUT}"
        )
    # One output has one format: that of the first listed split file found.
    found = [suffix for suffix in FORMATS.values() for name in splits if (output / f"{name}{suffix}").exists()]
    suffix = found[0] if found else ""
    return {STATS_FILE, MARKDOWN_FILE} | {f"{name}{suffix}" for name in splits}


def _written_files(output: Path) -> list[Path]:
    """The plain files in ``output`` that an earlier prepare_data output there wrote."""
    names = written_names(output)
    return [entry for entry in output.iterdir() if entry.name in names and entry.is_file() and not entry.is_symlink()]


def events_table(events: Events) -> pa.Table:
    """The columns SessionId, ItemId (original ids) and Time (float Unix seconds) of ``events``."""
    session = events.session if events.session_ids is None else events.session_ids.take(events.session)
    return pa.table({"SessionId": session, "ItemId": events.item_ids.take(events.item), "Time": events.time})


def _write_table(table: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
        return
    # pyarrow quotes header names whatever the quoting style: the header is written here, unquoted.
    options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with pa.OSFile(str(path), "wb") as sink:
        sink.write(("\t".join(table.column_names) + "\n").encode())
        try:
            csv.write_csv(table, sink, options)
        except pa.ArrowInvalid as error:
            raise PrepareError(
                f"{path}: an id holds a tab, quote or line break ({error}); use output_format=parquet"
            ) from error


def write_outputs(
    splits: dict[str, Events], stats: dict[str, Any], markdown: str, output: Path, output_format: str, overwrite: bool
) -> dict[str, Path]:
    """Write every split plus stats.json and stats.md to ``output``; nothing is left there unless all succeed."""
    check_output(output, output_format, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    paths = {name: output / f"{name}{FORMATS[output_format]}" for name in splits}
    try:
        temporary.mkdir()
        for name, events in splits.items():
            _write_table(events_table(events), temporary / paths[name].name)
            log.info("wrote %s: %s", paths[name], events.counts())
        (temporary / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        (temporary / MARKDOWN_FILE).write_text(markdown)
        _replace(temporary, output)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already after a successful rename
    return paths


def _replace(temporary: Path, output: Path) -> None:
    """Rename ``temporary`` to ``output``; an earlier output there is moved aside first, then its files deleted."""
    if not output.exists():
        os.replace(temporary, output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    try:
        os.replace(temporary, output)
    except OSError:
        os.replace(old, output)
        raise
    _delete_earlier_output(old)


def _delete_earlier_output(old: Path) -> None:
    """Delete the files prepare_data wrote in ``old``; anything that appeared there since the check is kept."""
    for path in _written_files(old):
        path.unlink()
    try:
        old.rmdir()
    except OSError:
        kept = sorted(entry.name for entry in old.iterdir())
        log.warning("the earlier output held %s, written while prepare_data ran; they are kept in %s", kept, old)
