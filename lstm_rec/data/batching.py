"""Padded batches of whole sessions, built with numpy from the compact arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from lstm_rec.data.sessions import Sessions


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

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, windows: np.ndarray) -> Tensor:
        windows = torch.as_tensor(windows)
        lengths = self.lengths[windows]
        steps = torch.arange(int(lengths.max()))
        inside = steps[None, :] < lengths[:, None]  # (B, T)
        positions = torch.where(inside, self.starts[windows, None] + steps[None, :], 0)
        return torch.where(inside, self.items[positions], 0)  # (B, T)


class LengthGroupedBatchSampler(Sampler[np.ndarray]):
    """Yields arrays of window numbers whose lengths are close, so padding stays small.

    When shuffling, each epoch permutes the windows, sorts them by length within pools of
    `pool_batches` batches, cuts the pools into batches and shuffles the batch order; the draw
    depends only on `seed` and the epoch. Without shuffling, batches follow the global length order.

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
    ) -> None:
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
        self.seed = seed
        self.pool_batches = pool_batches
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self._n_batches() // self.num_replicas)

    def _n_batches(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        batches = self._all_batches()
        if self.num_replicas > 1:
            batches = split_to_multiple(batches, self.num_replicas)[self.rank :: self.num_replicas]
        yield from batches

    def _all_batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return np.array_split(order, self._n_batches())
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        pool = self.batch_size * self.pool_batches
        batches = []
        for begin in range(0, len(order), pool):
            chunk = order[begin : begin + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[b] for b in rng.permutation(len(batches))]


def split_to_multiple(batches: list[np.ndarray], multiple: int) -> list[np.ndarray]:
    """Split the largest batches in two, in place in the order, until their count is a multiple of `multiple`."""
    batches = list(batches)
    for _ in range(-len(batches) % multiple):
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        if len(batches[largest]) < 2:
            raise ValueError(f"cannot cut {len(batches)} single-window batches into a multiple of {multiple}")
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches
