"""Lightning DataModules: click logs from files or the built-in generator, as batches of sessions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lstm_rec.data.batching import (
    LengthGroupedBatchSampler,
    ParallelSteps,
    ParallelStepSampler,
    SessionBatches,
    check_batching,
    check_order,
    check_steps_per_batch,
    resolve_batching,
)
from lstm_rec.data.io import check_time_unit, read_events
from lstm_rec.data.quality import DEFAULT_REUSE_GAP
from lstm_rec.data.sessions import ITEM, SESSION, ItemIndex, Sessions, split_by_start_time, to_sessions
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import CatalogScorer

log = logging.getLogger(__name__)


class SessionDataModule(L.LightningDataModule):
    """Turns train/valid/test event frames into session arrays and length-grouped batches.

    The item index comes from the training part only; validation and test rows with unknown items are dropped.
    Without a validation frame, the sessions of train that start last (`valid_fraction` of them, 0 for none, but no
    more than hold `valid_max_predictions` predictions when that is set) become validation; when they hold items the
    rest of train lacks, the test keeps its clicks on them (`test_catalog`, `test_scorer`): the model never
    recommends those items, so such a target is a miss. A caller that already has an item index (a checkpoint's) sets
    ``item_index`` before ``setup`` and then needs no training data; one that continues training a checkpoint, or
    ranks it beside baselines fitted on the training data, sets ``known_items`` (its index), and the index then keeps
    those items at their positions and appends the training data's new ones (ItemIndex.grown), or is those items when
    there is no training data. With `valid_sample`,
    the per-epoch validation takes that many of the validation sessions (drawn once from `seed`). `order` is how
    training sessions are ordered ("shuffle" or "time"), `batching` how they become batches: "windows" (padded
    windows of `batch_size` sessions, LengthGroupedBatchSampler) or "parallel" (session-parallel steps over
    `batch_size` lanes, the state carried from step to step, ParallelStepSampler). Session-parallel training takes
    `steps_per_batch` steps per training batch, each its own optimizer step, where the trainer leaves the optimizer
    steps to the module (`parallel_steps_per_batch`).
    """

    stationary = False  # whether every session comes from one unchanging process (refit=auto: nothing to gain)

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        max_len: int | None = 50,
        valid_fraction: float = 0.1,
        valid_max_predictions: int | None = None,
        valid_sample: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        order: str = "shuffle",
        batching: str = "windows",
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        check_order(order)
        check_batching(batching)
        check_steps_per_batch(steps_per_batch)
        self.order, self.batching, self.steps_per_batch = order, batching, steps_per_batch
        self._steps_for: tuple[Any, int] | None = None  # (the trainer, its steps a batch)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_len = max_len
        self.valid_fraction, self.valid_max_predictions = valid_fraction, valid_max_predictions
        if valid_sample is not None and valid_sample < 1:
            raise ValueError(f"data.valid_sample must be a positive number of sessions or null, got {valid_sample}")
        self.valid_sample = valid_sample
        self.num_workers = num_workers
        self.seed = seed
        self.item_index: ItemIndex | None = None
        self.known_items: ItemIndex | None = None
        self.train_sessions: Sessions | None = None
        self.valid_sessions: Sessions | None = None
        self.test_sessions: Sessions | None = None
        self.sources: dict[str, str] = {}  # "train", "valid", "test": the role and file each frame was read from
        self.valid_carved = False  # whether the validation sessions were split off the training data
        # The items of all of data.train when validation was split off it and holds items the rest lacks: the test
        # sessions index this catalog (the model's items first), so that no test click on a training item is dropped.
        self.test_catalog: ItemIndex | None = None
        # (train, valid, test) event frames already read, as load_frames returns them: setup takes these instead.
        self.preloaded: tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None] | None = None
        # When validation was split off data.train: its sessions, as read, and all of data.train's items (the model's
        # first, in its order) with their clicks, for a top-up on them (lstm_rec.jobs.train).
        self.carved: tuple[pd.DataFrame, ItemIndex] | None = None
        self._loaded = False

    def load_frames(self) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
        """Sorted (train, valid, test) event frames; any may be None when not configured."""
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        return len(self.item_index)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        train, valid, test = self.load_frames() if self.preloaded is None else self.preloaded
        if train is not None and valid is None and self.item_index is None and self.valid_fraction > 0:
            train, valid = split_by_start_time(train, self.valid_fraction, "validation", self.valid_max_predictions)
            self.valid_carved = True
        if self.item_index is None and train is None and self.known_items is not None:
            self.item_index = self.known_items
        if self.item_index is None:
            if train is None:
                raise ValueError(
                    "data.train is not set: the item index (and any baseline) comes from training data; "
                    "set data.train=PATH, or evaluate a checkpoint with ckpt_path=PATH"
                )
            if self.known_items is None:
                self.item_index = ItemIndex.from_items(train[ITEM])
            else:
                self.item_index = self.known_items.grown(train[ITEM])
            log.info("item index: %d items from training data", len(self.item_index))
        if train is not None:
            self.train_sessions = to_sessions(train, self.item_index, "train", self.sources.get("train"))
        if valid is not None:
            self.valid_sessions = to_sessions(valid, self.item_index, "validation", self.sources.get("valid"))
        if self.valid_carved:
            self.carved = (valid, self._all_training_items(valid))
        if test is not None:
            if self.valid_carved and len(self.carved[1]) > len(self.item_index):
                self.test_catalog = self.carved[1]
                self._log_validation_only_items(valid)
            catalog = self.item_index if self.test_catalog is None else self.test_catalog
            self.test_sessions = to_sessions(test, catalog, "test", self.sources.get("test"))
            if self.test_catalog is not None:
                self._log_unknown_test_items()
        self._loaded = True

    def _all_training_items(self, valid: pd.DataFrame) -> ItemIndex:
        """All of data.train's items: the model's, in its order, then those only the validation sessions split off it
        hold (ItemIndex.grown), each counted by its clicks in both parts."""
        grown = self.item_index.grown(valid[ITEM])  # counts: the validation sessions' clicks
        grown.counts[: len(self.item_index)] += self.item_index.counts
        return grown

    def _log_validation_only_items(self, valid: pd.DataFrame) -> None:
        log.warning(
            "%d items of the training data appear only in the validation sessions split off it (%d sessions), which "
            "the model does not train on: the test keeps their clicks, as blank steps of the input and, as targets, "
            "misses (they are never recommended)",
            len(self.test_catalog) - len(self.item_index),
            valid[SESSION].nunique(),
        )

    def _log_unknown_test_items(self) -> None:
        """How many test predictions are on items only the validation sessions hold (misses)."""
        n_own, sessions = len(self.item_index), self.test_sessions
        missed = int((sessions.items[sessions.is_target] > n_own).sum())
        log.warning(
            "test: %d of its %d next-item predictions are on items only in the validation sessions (counted as misses)",
            missed,
            sessions.n_targets,
        )

    def test_scorer(self, scorer: Any) -> Any:
        """`scorer` (of the model's items) as it ranks the test sessions: on the test catalog when there is one."""
        if self.test_catalog is None:
            return scorer
        return CatalogScorer(scorer, self.item_index, self.test_catalog)

    @property
    def valid_share(self) -> float:
        """The validation sessions' share of the next-item predictions of training and validation together."""
        if self.valid_sessions is None or self.train_sessions is None:
            return 0.0
        held = self.valid_sessions.n_targets
        return held / (held + self.train_sessions.n_targets)

    def _loader(self, sessions: Sessions | None, name: str, train: bool, shard: bool = True) -> DataLoader:
        if sessions is None:
            raise ValueError(f"no {name} data: set data.{name}=PATH")
        # Under a distributed trainer each process loads its own share; evaluation metrics sum over processes.
        distributed = shard and self.trainer is not None and self.trainer.world_size > 1
        processes = self.trainer.world_size if distributed else 1
        if train and resolve_batching(self.batching, processes) == "parallel":
            reload = None if self.trainer is None else self.trainer.reload_dataloaders_every_n_epochs
            if reload not in (None, 1):
                raise ValueError(
                    f"data.batching=parallel needs trainer.reload_dataloaders_every_n_epochs=1, got {reload}: its "
                    "epochs differ in their number of steps, which Lightning counts when it makes the loader"
                )
            dataset = ParallelSteps(sessions)
            sampler = ParallelStepSampler(
                sessions.lengths, sessions.offsets, self.batch_size, seed=self.seed, order=self.order,
                times=dataset.times, num_replicas=processes, steps_per_batch=self.parallel_steps_per_batch(),
            )  # fmt: skip
            # This epoch's steps: Lightning reads the loader's length before it sets the sampler's epoch.
            sampler.set_epoch(0 if self.trainer is None else self.trainer.current_epoch)
            return self._data_loader(dataset, sampler)
        dataset = SessionBatches(sessions, self.max_len if train else None)
        sampler = LengthGroupedBatchSampler(
            dataset.lengths,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            num_replicas=self.trainer.world_size if distributed else 1,
            rank=self.trainer.global_rank if distributed else 0,
            order=self.order if train else "shuffle",
            times=dataset.times,
        )
        return self._data_loader(dataset, sampler)

    def parallel_steps_per_batch(self) -> int:
        """Session-parallel steps per training batch: `steps_per_batch`, or 1 where the trainer steps the optimizer
        itself (Lightning clips or accumulates gradients only under its automatic optimization, one step a batch), or
        where training does not run on session-parallel steps. Said once in the log when it is not 1 or cannot be."""
        trainer, k = self.trainer, self.steps_per_batch
        if trainer is None or k == 1:
            return 1
        if self._steps_for is not None and self._steps_for[0] is trainer:  # asked at every batch: decided once
            return self._steps_for[1]
        parallel = resolve_batching(self.batching, trainer.world_size, quiet=True) == "parallel"
        why = None
        if trainer.gradient_clip_val:
            why = f"trainer.gradient_clip_val={trainer.gradient_clip_val}"
        elif trainer.accumulate_grad_batches != 1:
            why = f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"
        if parallel:  # windows take one step a batch whatever this says
            told = f"1 step a batch: {why} needs Lightning's own optimizer step" if why else f"{k} steps a batch"
            log.info("data.steps_per_batch=%d: %s", k, told)
        self._steps_for = (trainer, k if parallel and why is None else 1)
        return self._steps_for[1]

    def _data_loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._on_cuda(),
            # Each new iterator draws a seed for its workers; from the global stream it would shift the dropout masks
            # and negatives that EpochSeed fixes per epoch, so that a resumed run would draw other ones.
            generator=torch.Generator().manual_seed(self.seed or 0),
        )

    def _on_cuda(self) -> bool:
        """Whether the trainer runs on a CUDA GPU: batches are then pinned, so that their copies to the GPU
        run without making the host wait (a copy from pageable memory may wait for the device)."""
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_sessions, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        """The per-epoch validation: at most `valid_sample` sessions, the same ones every epoch."""
        sessions = self.valid_sessions
        if sessions is not None and self.valid_sample is not None and sessions.n_sessions > self.valid_sample:
            chosen = np.random.default_rng(self.seed).choice(sessions.n_sessions, self.valid_sample, replace=False)
            sessions = sessions.subset(np.sort(chosen))
        return self._loader(sessions, "valid", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_sessions, "test", train=False)

    def full_dataloader(self, name: str) -> DataLoader:
        """All of the "valid" or "test" sessions in one process, whatever the trainer's processes."""
        sessions = {"valid": self.valid_sessions, "test": self.test_sessions}[name]
        return self._loader(sessions, name, train=False, shard=False)


class FileDataModule(SessionDataModule):
    """Sessions from the user's click logs: CSV, TSV or Parquet, picked by extension.

    Exact duplicate rows, and sessions that span more than `reuse_gap` seconds (null: not counted), are
    counted and logged as warnings: the loader keeps them as they are. Numeric times are in `time_unit` (s, ms, us,
    ns), or auto: each file's by the numbers' size (lstm_rec.data.io.time_unit_of), logged when not seconds.
    """

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        test: str | None = None,
        session_col: str = "SessionId",
        item_col: str = "ItemId",
        time_col: str = "Time",
        sep: str | None = None,
        reuse_gap: float | None = DEFAULT_REUSE_GAP,
        time_unit: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_time_unit(time_unit)
        self.paths = {"train": train, "valid": valid, "test": test}
        self.columns = {"session_col": session_col, "item_col": item_col, "time_col": time_col, "sep": sep}
        self.reuse_gap = reuse_gap
        self.time_unit = time_unit

    def load_frames(self) -> tuple[pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None]:
        if self.paths["test"] is None:
            raise ValueError("data.test is not set: training and evaluation end with a test; set data.test=PATH")
        options = {**self.columns, "reuse_gap": self.reuse_gap, "time_unit": self.time_unit}
        frames = {
            name: None if path is None else read_events(Path(path), f"data.{name}", **options)
            for name, path in self.paths.items()
        }
        self.sources = {name: f"data.{name} '{path}'" for name, path in self.paths.items() if path is not None}
        units = {name: frame.attrs.get("time_unit") for name, frame in frames.items() if frame is not None}
        if len({unit for unit in units.values() if unit is not None}) > 1:
            log.warning(
                "data.time_unit=auto read the files' numeric times in different units (%s): each file is in its own "
                "unit by the size of its numbers; set data.time_unit to one unit if they share it",
                ", ".join(f"data.{name} in {unit}" for name, unit in units.items() if unit is not None),
            )
        return frames["train"], frames["valid"], frames["test"]


class SyntheticDataModule(SessionDataModule):
    """The built-in generated sessions; the last `test_fraction` of sessions by time are the test set."""

    # Every session is drawn from the same unchanging process: the newest hold nothing the older ones lack.
    stationary = True

    def __init__(
        self,
        n_sessions: int = 20_000,
        n_items: int = 1_000,
        mean_length: float = 6.0,
        max_length: int = 60,
        n_successors: int = 4,
        follow_prob: float = 0.7,
        repeat_prob: float = 0.1,
        zipf_exponent: float = 1.0,
        test_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.generator_args = {
            "n_sessions": n_sessions,
            "n_items": n_items,
            "mean_length": mean_length,
            "max_length": max_length,
            "n_successors": n_successors,
            "follow_prob": follow_prob,
            "repeat_prob": repeat_prob,
            "zipf_exponent": zipf_exponent,
        }
        self.test_fraction = test_fraction

    def load_frames(self) -> tuple[pd.DataFrame, None, pd.DataFrame]:
        events = generate_events(**self.generator_args, seed=self.seed)
        train, test = split_by_start_time(events, self.test_fraction, "test")
        return train, None, test
