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


def check_output(output: Path, output_format: str, overwrite: bool) -> None:
    """Fail before any work when the output cannot be written as asked."""
    if output_format not in FORMATS:
        raise PrepareError(f"output_format must be one of {list(FORMATS)}, got {output_format!r}")
    if output.exists() and not overwrite:
        raise PrepareError(f"output: '{output}' exists; choose a new output=DIR, or set overwrite=true to replace it")
    if output.exists() and not (output / STATS_FILE).is_file() and (not output.is_dir() or any(output.iterdir())):
        raise PrepareError(
            f"output: '{output}' exists and is not a prepare_data output (no {STATS_FILE}); overwrite=true only "
            "replaces earlier outputs, so choose a new output=DIR"
        )


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
        (temporary / "stats.md").write_text(markdown)
        _replace(temporary, output)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already after a successful rename
    return paths


def _replace(temporary: Path, output: Path) -> None:
    """Rename ``temporary`` to ``output``; an earlier output there is moved aside first, then deleted."""
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
    shutil.rmtree(old, ignore_errors=True)
