"""Padded batches of whole sessions, built with numpy from the compact arrays."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from lstm_rec.data.sessions import Sessions

log = logging.getLogger(__name__)


def session_windows(sessions: Sessions, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Cut sessions into windows of at most `max_len` targets; every target is kept exactly once.

    A session of L clicks has L - 1 targets. Window j covers clicks j*max_len .. j*max_len + max_len,
    so consecutive windows share one click: the last input of one window is the first of the next.
    The LSTM starts each window from a fresh state.

    Returns:
        (starts, lengths): the offset into ``sessions.items`` and the click count of each window.
    """
    starts, lengths = sessions.offsets[:-1], sessions.lengths
    if max_len is None:
        return starts.copy(), lengths.copy()
    if max_len < 1:
        raise ValueError(f"data.max_len must be a positive number of targets or null, got {max_len}")
    n_windows = np.maximum(-(-(lengths - 1) // max_len), 1)  # ceil((L - 1) / max_len)
    session_of_window = np.repeat(np.arange(len(lengths)), n_windows)
    first_window = np.cumsum(n_windows) - n_windows
    window_in_session = np.arange(n_windows.sum()) - np.repeat(first_window, n_windows)
    skip = window_in_session * max_len
    window_starts = starts[session_of_window] + skip
    window_lengths = np.minimum(lengths[session_of_window] - skip, max_len + 1)
    return window_starts, window_lengths


class SessionBatches(Dataset):
    """Indexed by an array of window numbers; returns their clicks right-padded with 0, as (B, T)."""

    def __init__(self, sessions: Sessions, max_len: int | None = None) -> None:
        self.items = torch.from_numpy(sessions.items)
        starts, lengths = session_windows(sessions, max_len)
        self.starts = torch.from_numpy(starts)
        self.lengths = torch.from_numpy(lengths)
        # The time of each window's first click (None without click times): what order="time" sorts by.
        self.times = None if sessions.times is None else sessions.times[starts]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, windows: np.ndarray) -> Tensor:
        windows = torch.as_tensor(windows)
        lengths = self.lengths[windows]
        steps = torch.arange(int(lengths.max()))
        inside = steps[None, :] < lengths[:, None]  # (B, T)
        positions = torch.where(inside, self.starts[windows, None] + steps[None, :], 0)
        return torch.where(inside, self.items[positions], 0)  # (B, T)


# How training batches are drawn: "shuffle" (random, by length within pools) or "time" (consecutive by time).
ORDERS = ("shuffle", "time")


def check_order(order: str, has_times: bool = True) -> None:
    """data.order must name one of ORDERS, and order=time needs click times (`has_times`)."""
    if order not in ORDERS:
        raise ValueError(f"data.order must be one of {list(ORDERS)}, got {order!r}")
    if order == "time" and not has_times:
        raise ValueError("data.order=time needs click times (a Time column); these sessions have none")


UNSHUFFLED_POSITIONS = 8  # times batch_size: the padded positions an evaluation batch may hold


class LengthGroupedBatchSampler(Sampler[np.ndarray]):
    """Yields arrays of window numbers whose lengths are close, so padding stays small.

    When shuffling, each epoch permutes the windows, sorts them by length within pools of
    `pool_batches` batches, cuts the pools into batches and shuffles the batch order; the draw
    depends only on `seed` and the epoch. Without shuffling (evaluation), batches follow the global length
    order and also hold at most `batch_size` * UNSHUFFLED_POSITIONS padded positions: otherwise the batch of the
    longest sessions pads every one to the longest (on yoochoose-100k's test set, 3.5 times the real positions).

    With `order="time"` (training only), the windows follow the time of their first click (`times`) and each batch
    holds `batch_size` consecutive ones, the same in every epoch: an epoch ends on the log's latest sessions, and a
    batch's sessions were active at the same time (so its targets, which are each other's negatives in the sampled
    losses, are items in demand together). Such batches mix lengths: on the shared logs they pad about five times
    the clicks they hold, against 1.1-1.2 times shuffled (sorting by length within runs of 16 batches, which pads
    1.4 times, lost the accuracy gain on yoochoose-100k; see docs/data.md).

    With `num_replicas` processes, every process draws the same batches and takes every
    `num_replicas`-th one from `rank` on. The largest batches are first split in two until the count
    divides evenly, so each process runs the same number of steps and no window is dropped or repeated.
    """

    def __init__(
        self,
        lengths: np.ndarray | Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        order: str = "shuffle",
        times: np.ndarray | None = None,
    ) -> None:
        check_order(order, has_times=times is not None)
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.lengths = np.asarray(lengths)
        if len(self.lengths) < num_replicas:
            raise ValueError(
                f"{len(self.lengths)} sessions cannot be shared by {num_replicas} processes; "
                "use fewer devices (trainer.devices) or more data"
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.order = order
        self.times = None if times is None else np.asarray(times)
        self.seed = seed
        self.pool_batches = pool_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle and self.num_replicas == 1:
            return -(-len(self.lengths) // self.batch_size)
        return len(self._share())

    def __iter__(self) -> Iterator[np.ndarray]:
        yield from self._share()

    def _share(self) -> list[np.ndarray]:
        """This process's batches."""
        batches = self._all_batches()
        if self.num_replicas > 1:
            batches = split_to_multiple(batches, self.num_replicas)[self.rank :: self.num_replicas]
        return batches

    def _all_batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            return self._ordered_batches()
        if self.order == "time":
            by_time = np.argsort(self.times, kind="stable")  # a session's windows stay in their order
            return [by_time[i : i + self.batch_size] for i in range(0, len(by_time), self.batch_size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * self.pool_batches
        batches = []
        for begin in range(0, len(order), pool):
            chunk = order[begin : begin + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[b] for b in rng.permutation(len(batches))]

    def _ordered_batches(self) -> list[np.ndarray]:
        """Windows in length order, cut where a batch would exceed `batch_size` windows or its position budget."""
        order = np.argsort(self.lengths, kind="stable")
        lengths, budget = self.lengths[order], self.batch_size * UNSHUFFLED_POSITIONS
        batches, begin = [], 0
        while begin < len(order):
            # The longest window of a batch is its last; the largest end whose padded size fits the budget.
            ends = np.arange(begin + 1, min(begin + self.batch_size, len(order)) + 1)
            fits = (ends - begin) * lengths[ends - 1] <= budget
            end = int(ends[fits][-1]) if fits.any() else begin + 1
            batches.append(order[begin:end])
            begin = end
        return batches


def split_to_multiple(batches: list[np.ndarray], multiple: int) -> list[np.ndarray]:
    """Batches whose count is a multiple of `multiple`: the largest are split in two, in place in the order, or,
    when there are too few windows for the next multiple, the smallest neighbouring pairs are merged."""
    batches = list(batches)
    windows = sum(len(batch) for batch in batches)
    target = -(-len(batches) // multiple) * multiple
    if windows < target:
        target -= multiple
    if target == 0:
        raise ValueError(f"cannot cut {windows} windows into a multiple of {multiple} batches")
    while len(batches) < target:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    while len(batches) > target:
        pair = min(range(len(batches) - 1), key=lambda b: len(batches[b]) + len(batches[b + 1]))
        batches[pair : pair + 2] = [np.concatenate(batches[pair : pair + 2])]
    return batches


# How training sessions become batches: "windows" (padded windows of whole sessions, the state starting fresh in each)
# or "parallel" (session-parallel steps, the state carried from step to step; see ParallelSteps).
# auto: parallel in one process, windows with several (a lane's state cannot be shared between processes).
BATCHINGS = ("auto", "windows", "parallel")


def check_batching(batching: str) -> None:
    """data.batching must name one of BATCHINGS."""
    if batching not in BATCHINGS:
        raise ValueError(f"data.batching must be one of {list(BATCHINGS)}, got {batching!r}")


def resolve_batching(batching: str, processes: int, quiet: bool = False) -> str:
    """The batching that data.batching=`batching` means for a run in `processes` processes; auto is logged unless
    `quiet`."""
    check_batching(batching)
    if batching != "auto":
        return batching
    chosen = "parallel" if processes == 1 else "windows"
    why = "one process" if processes == 1 else f"{processes} processes: lanes cannot carry state across processes"
    if not quiet:
        log.info("data.batching=auto: %s (%s)", chosen, why)
    return chosen


def check_steps_per_batch(steps_per_batch: Any) -> None:
    if isinstance(steps_per_batch, bool) or not isinstance(steps_per_batch, int) or steps_per_batch < 1:
        raise ValueError(
            f"data.steps_per_batch must be a positive whole number of session-parallel steps, got {steps_per_batch!r}"
        )


class ParallelStep(NamedTuple):
    """One step of session-parallel training: for each of n lanes in use, the click it reads and the next one.

    slots: (n,) the lane (a row of the carried state) of each pair; reset: (n,) true where the lane starts a new
    session at this step (its state starts from zero); inputs, targets: (n,) item indices.
    """

    slots: Tensor
    reset: Tensor
    inputs: Tensor
    targets: Tensor


class ParallelSteps(Dataset):
    """Indexed by a (n, 2) array of [target position, lane] rows (from ParallelStepSampler); returns a ParallelStep."""

    def __init__(self, sessions: Sessions) -> None:
        self.items = torch.from_numpy(sessions.items)
        first_target = np.zeros(sessions.n_events, dtype=bool)
        first_target[sessions.offsets[:-1][sessions.lengths > 1] + 1] = True
        self.first_target = torch.from_numpy(first_target)
        self.n_targets = sessions.n_targets
        self.times = None if sessions.times is None else sessions.times[sessions.offsets[:-1]]

    def __len__(self) -> int:
        return self.n_targets

    def __getitem__(self, rows: np.ndarray | list[np.ndarray]) -> ParallelStep | list[ParallelStep]:
        """One step for one (n, 2) array; for a list of them (a batch of several steps), the list of their steps."""
        if isinstance(rows, list):
            return [self[step] for step in rows]
        rows = torch.as_tensor(rows)
        positions, slots = rows[:, 0], rows[:, 1]
        return ParallelStep(slots, self.first_target[positions], self.items[positions - 1], self.items[positions])


class ParallelStepSampler(Sampler[np.ndarray]):
    """Session-parallel steps (GRU4Rec's mini-batches): `width` lanes each read one session click by click; at
    every step each lane in use contributes one (click, next click) pair, and a lane whose session has ended takes
    the next session in the epoch's order, its state reset. When no session is left, lanes fall idle one by one, so
    every target of every session is trained on once an epoch and the last steps are narrower.

    The sessions' order is a permutation drawn from `seed` and the epoch (order="shuffle"), or the time of their
    first click (order="time", the same every epoch). Yields (n, 2) arrays of [target position, lane] rows, the
    target position indexing the sessions' item array; with `steps_per_batch` k > 1, lists of k such arrays, the
    epoch's steps in their order (the last list may be shorter): one training batch of k steps, each its own optimizer
    step (SessionRecModule trains such a batch with manual optimization; one Lightning batch per step cost about
    0.7 ms of a 9 ms step on retailrocket-sessions, docs/model.md#steps-per-batch). `n_steps` is the epoch's steps.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        offsets: np.ndarray,
        width: int,
        seed: int = 0,
        order: str = "shuffle",
        times: np.ndarray | None = None,
        num_replicas: int = 1,
        steps_per_batch: int = 1,
    ) -> None:
        check_order(order, has_times=times is not None)
        if width < 1:
            raise ValueError(f"batch size (the lanes of session-parallel steps) must be positive, got {width}")
        check_steps_per_batch(steps_per_batch)
        self.steps_per_batch = steps_per_batch
        if num_replicas > 1:
            raise ValueError(
                "data.batching=parallel trains in one process (its lanes carry state from step to step); use "
                "data.batching=windows or auto (windows with several devices), or trainer.devices=1"
            )
        self.lengths, self.offsets = np.asarray(lengths), np.asarray(offsets)
        self.width, self.seed, self.order = width, seed, order
        self.times = None if times is None else np.asarray(times)
        self.epoch = 0
        self._schedule: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def n_steps(self) -> int:
        """This epoch's session-parallel steps (its optimizer steps)."""
        return len(self._steps())

    def __len__(self) -> int:
        return -(-self.n_steps // self.steps_per_batch)  # batches: k steps each, the last one maybe fewer

    def __iter__(self) -> Iterator[np.ndarray | list[np.ndarray]]:
        steps, k = self._steps(), self.steps_per_batch
        if k == 1:
            yield from steps
        else:
            for start in range(0, len(steps), k):
                yield steps[start : start + k]

    def _session_order(self) -> np.ndarray:
        trained = np.flatnonzero(self.lengths > 1)  # a one-click session has no target
        if self.order == "time":
            return trained[np.argsort(self.times[trained], kind="stable")]
        return np.random.default_rng((self.seed, self.epoch)).permutation(trained)

    def _steps(self) -> list[np.ndarray]:
        """This epoch's steps, computed once per epoch."""
        if self._schedule is None or self._schedule[0] != self.epoch:
            self._schedule = (self.epoch, self._build())
        return self._schedule[1]

    def _build(self) -> list[np.ndarray]:
        sessions = self._session_order()
        targets = self.lengths[sessions] - 1
        lanes = min(self.width, len(sessions))
        # Each session goes to the lane that falls free first (the lowest lane on a tie): lanes start together.
        free = [(0, lane) for lane in range(lanes)]
        heapq.heapify(free)
        first_step, lane_of = np.empty(len(sessions), dtype=np.int64), np.empty(len(sessions), dtype=np.int64)
        for i, n in enumerate(targets.tolist()):
            step, lane = heapq.heappop(free)
            first_step[i], lane_of[i] = step, lane
            heapq.heappush(free, (step + n, lane))
        # One row per target: its step, lane and position in the item array.
        within = np.arange(targets.sum()) - np.repeat(np.cumsum(targets) - targets, targets)
        steps = np.repeat(first_step, targets) + within
        positions = np.repeat(self.offsets[sessions] + 1, targets) + within
        rows = np.stack([positions, np.repeat(lane_of, targets)], axis=1)
        order = np.lexsort((rows[:, 1], steps))
        rows, steps = rows[order], steps[order]
        cuts = np.flatnonzero(np.diff(steps)) + 1
        return np.split(rows, cuts)
