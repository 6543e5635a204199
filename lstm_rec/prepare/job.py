"""The prepare_data job: read a raw log with its recipe, clean and split it, write the splits and their stats."""

from __future__ import annotations

import logging
import shlex
import time
import typing
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from lstm_rec.prepare.events import Events, PrepareError
from lstm_rec.prepare.protocol import Prepared, Protocol
from lstm_rec.prepare.stats import prepare_stats, stats_markdown
from lstm_rec.prepare.writer import check_output, write_outputs

log = logging.getLogger(__name__)


class Reader(typing.Protocol):
    """Reads raw files of one format into events grouped by session."""

    def read(self, paths: list[Path]) -> Events: ...


class Recipe:
    """A raw format and the published protocol that turns it into splits (one file of conf/dataset)."""

    def __init__(self, name: str, reader: Reader, protocol: Protocol) -> None:
        self.name = name
        self.reader = reader
        self.protocol = protocol

    def run(self, paths: list[Path]) -> Prepared:
        events = self.reader.read(paths)
        if len(events) == 0:
            raise PrepareError(f"{', '.join(map(str, paths))}: no clicks, only a header; expected a click log")
        log.info("%s: read %s from %s", self.name, events.counts(), ", ".join(map(str, paths)))
        return self.protocol.apply(events)


def input_paths(given: str | list[str] | ListConfig) -> list[Path]:
    """``input`` as a list of paths: one file, or several files of one log."""
    names = [given] if isinstance(given, str | Path) else list(given)
    return [Path(name).expanduser() for name in names]


def prepare(
    recipe: Recipe, input: str | list[str], output: str, output_format: str = "parquet", overwrite: bool = False
) -> dict[str, Any]:
    """Prepare ``input`` into ``output``; returns stats.json's content plus the written ``files``."""
    start = time.perf_counter()
    output_dir = Path(output).expanduser()
    check_output(output_dir, output_format, overwrite)
    paths = input_paths(input)
    prepared = recipe.run(paths)
    stats = prepare_stats(
        recipe.name, [str(p) for p in paths], recipe.protocol.settings(), prepared.steps, prepared.splits
    )
    files = write_outputs(prepared.splits, stats, stats_markdown(stats), output_dir, output_format, overwrite)
    log.info("prepared %s in %.1f s", output_dir, time.perf_counter() - start)
    return stats | {"files": {name: str(path) for name, path in files.items()}}


def prepare_data(cfg: DictConfig) -> dict[str, Any]:
    """The job as configured in conf/prepare_data.yaml."""
    return prepare(instantiate(cfg.dataset), cfg.input, cfg.output, cfg.output_format, cfg.overwrite)


def train_commands(files: dict[str, str]) -> list[str]:
    """The train.py commands that use prepared files: the final run, and tuning without the test set."""
    runs = [("train_full", "train_valid", "test"), ("train_tr", "train_valid", "train_valid")]
    commands = []
    for train, valid, test in runs:
        overrides = [f"data.train={files[train]}", f"data.valid={files[valid]}", f"data.test={files[test]}"]
        commands.append("python scripts/train.py data=files " + " ".join(shlex.quote(o) for o in overrides))
    return commands
