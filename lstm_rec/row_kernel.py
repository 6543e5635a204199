"""One compiled CPU pass for Adagrad with momentum over the rows of a sparse gradient (lstm_rec.optim).

The torch ops of the same update make eleven passes over the looked-up rows (a coalesce to sum repeated rows, three
gathers, two copies back, an indexed add, the arithmetic), most of them single-threaded scatters: about 1.6 ms of a
9 ms training step on retailrocket-sessions' 2,300 rows a step (docs/model.md#the-sparse-row-update). This kernel
sorts the gradient's row indices, sums each row's entries and updates its sum, velocity and value in one pass, over
torch's number of threads; the update is a loop over a row's width, which vectorises (docs/model.md). It needs numba
(installed with lstm_rec); without it the optimizer takes the torch ops.

With torch on one thread the pass runs on the calling thread alone and numba starts no thread pool. Its threaded
version brings an OpenMP pool of its own beside torch's, whose idle workers keep a core busy: two one-thread training
runs side by side on 2 cores ran 2.4 times slower each with that pool started than without it (28.7 against 12.1 ms a
step), so it runs only where torch itself was given more than one thread.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

_kernel: Any = None
_unavailable: str | None = None
_threads_fail: str | None = None


def available() -> str | None:
    """None when the kernel can run, else why not (numba missing or failing to compile)."""
    _compiled()
    return _unavailable


def update_rows(
    table: Tensor, sums: Tensor, velocities: Tensor, rows: Tensor, values: Tensor, lr: float, momentum: float,
    eps: float,
) -> None:  # fmt: skip
    """Adagrad with momentum on the rows `rows` (N,) of (R, W) float32 `table`, `sums` and `velocities`, in place,
    for the gradient rows `values` (N, W); a row listed more than once takes the sum of its entries first."""
    kernels = _compiled()
    if kernels is None:
        raise RuntimeError(f"the compiled row update is unavailable: {_unavailable}")
    segment, one_thread, threads = kernels
    rows_np = rows.numpy()
    order, starts = segment(rows_np)
    arrays = (table.numpy(), sums.numpy(), velocities.numpy(), rows_np, values.contiguous().numpy(), order, starts)
    settings = (np.float32(lr), np.float32(momentum), np.float32(eps))
    workers = torch.get_num_threads()
    if workers > 1 and _threads_fail is None:
        import numba

        try:
            numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
            threads(*arrays, *settings)
            return
        except Exception as error:  # no threading layer: the one-thread pass does the same
            _threads_failed(error)
    one_thread(*arrays, *settings)


def _threads_failed(error: Exception) -> None:
    global _threads_fail
    _threads_fail = f"{type(error).__name__}: {error}"
    log.warning("the compiled row update runs on one thread: its threaded version failed (%s)", _threads_fail)


def _compiled() -> Any:
    global _kernel, _unavailable
    if _kernel is None and _unavailable is None:
        try:
            _kernel = _build()
        except Exception as error:  # any failure leaves the torch ops, which give the same update
            _unavailable = f"{type(error).__name__}: {error}"
            log.warning("the compiled sparse row update is unavailable (%s); using torch ops", _unavailable)
    return _kernel


def _build() -> Any:
    import numba

    @numba.njit(cache=True, nogil=True)
    def segment(rows):  # pragma: no cover
        """The order that sorts `rows` (stable: a row's entries are summed in their given order), and where each
        distinct row's entries start in it, with the end last."""
        order = np.argsort(rows, kind="mergesort")
        starts = np.empty(len(rows) + 1, np.int64)
        count = 0
        for i in range(len(order)):
            if i == 0 or rows[order[i]] != rows[order[i - 1]]:
                starts[count] = i
                count += 1
        starts[count] = len(order)
        return order, starts[: count + 1]

    # error_model="numpy": no zero-division check per element, which would keep the loops from vectorising.
    @numba.njit(inline="always", error_model="numpy")
    def update_row(table, sums, velocities, grad, row, lr, momentum, eps):  # pragma: no cover
        """One row's update for its summed gradient `grad` (W,): a loop over the row alone, which vectorises."""
        weights, total_row, velocity_row = table[row], sums[row], velocities[row]
        for j in range(len(grad)):
            total = total_row[j] + grad[j] * grad[j]
            total_row[j] = total
            velocity = velocity_row[j] * momentum + grad[j] / (np.sqrt(total) + eps)
            velocity_row[j] = velocity
            weights[j] -= lr * velocity

    @numba.njit(inline="always")
    def summed(values, order, first, end, scratch):  # pragma: no cover
        """The gradient of a row listed at order[first:end]: its one entry as it is, or its entries summed in their
        given order into `scratch`. Summing in a loop over the entries outside the loop over the width lets that
        loop vectorise; nested the other way it ran about twice as slow on one thread."""
        if end - first == 1:
            return values[order[first]]
        scratch[:] = values[order[first]]
        for i in range(first + 1, end):
            entry = values[order[i]]
            for j in range(len(scratch)):
                scratch[j] += entry[j]
        return scratch

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def one_thread(table, sums, velocities, rows, values, order, starts, lr, momentum, eps):  # pragma: no cover
        scratch = np.empty(table.shape[1], table.dtype)
        for u in range(len(starts) - 1):
            grad = summed(values, order, starts[u], starts[u + 1], scratch)
            update_row(table, sums, velocities, grad, rows[order[starts[u]]], lr, momentum, eps)

    @numba.njit(cache=True, nogil=True, error_model="numpy", parallel=True)
    def threads(table, sums, velocities, rows, values, order, starts, lr, momentum, eps):  # pragma: no cover
        n = len(starts) - 1
        # One scratch row for each row listed more than once, so that the threads never share one.
        slot = np.full(n, -1, np.int64)
        repeated = 0
        for u in range(n):
            if starts[u + 1] - starts[u] > 1:
                slot[u] = repeated
                repeated += 1
        scratch = np.empty((max(repeated, 1), table.shape[1]), table.dtype)
        for u in numba.prange(n):
            grad = summed(values, order, starts[u], starts[u + 1], scratch[max(slot[u], 0)])
            update_row(table, sums, velocities, grad, rows[order[starts[u]]], lr, momentum, eps)

    # Compile now, on a tiny problem, so that a failure shows here and not in the middle of a training step.
    rows = np.array([1, 1], np.int64)
    table = np.zeros((2, 1), np.float32)
    one_thread(
        table, np.zeros_like(table), np.zeros_like(table), rows, np.ones((2, 1), np.float32), *segment(rows),
        np.float32(0.1), np.float32(0.0), np.float32(1e-10),
    )  # fmt: skip
    if not np.isclose(table[1, 0], -0.1):
        raise RuntimeError(f"self-check failed: one step of the row update gave {table[1, 0]}, expected -0.1")
    return segment, one_thread, threads  # `threads` compiles at its first call: its thread pool starts only then
