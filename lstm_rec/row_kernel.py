"""One compiled CPU pass for Adagrad with momentum over the rows of a sparse gradient (lstm_rec.optim).

The torch ops of the same update make eleven passes over the looked-up rows (a coalesce to sum repeated rows, three
gathers, two copies back, an indexed add, the arithmetic), most of them single-threaded scatters: about 1.6 ms of a
9 ms training step on retailrocket-sessions' 2,300 rows a step (docs/model.md#the-sparse-row-update). This kernel
sorts the gradient's row indices, sums each row's entries and updates its sum, velocity and value in one parallel
pass: about 0.3 ms. It needs numba (installed with lstm_rec); without it the optimizer takes the torch ops.
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
    kernel = _compiled()
    if kernel is None:
        raise RuntimeError(f"the compiled row update is unavailable: {_unavailable}")
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    kernel(
        table.numpy(), sums.numpy(), velocities.numpy(), rows.numpy(), values.contiguous().numpy(),
        np.float32(lr), np.float32(momentum), np.float32(eps),
    )  # fmt: skip


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

    @numba.njit(parallel=True, cache=True, nogil=True)
    def adagrad_momentum_rows(table, sums, velocities, rows, values, lr, momentum, eps):  # pragma: no cover
        order = np.argsort(rows, kind="mergesort")  # stable: a row's entries are summed in their given order
        n = rows.shape[0]
        starts = np.empty(n + 1, np.int64)
        count = 0
        for i in range(n):
            if i == 0 or rows[order[i]] != rows[order[i - 1]]:
                starts[count] = i
                count += 1
        starts[count] = n
        for u in numba.prange(count):
            first, end = starts[u], starts[u + 1]
            row = rows[order[first]]
            for j in range(table.shape[1]):
                grad = values[order[first], j]
                for k in range(first + 1, end):
                    grad += values[order[k], j]
                total = sums[row, j] + grad * grad
                sums[row, j] = total
                velocity = velocities[row, j] * momentum + grad / (np.sqrt(total) + eps)
                velocities[row, j] = velocity
                table[row, j] -= lr * velocity

    # Compile now, on a tiny problem, so that a failure shows here and not in the middle of a training step.
    table = np.zeros((2, 1), np.float32)
    adagrad_momentum_rows(
        table, np.zeros_like(table), np.zeros_like(table), np.array([1, 1], np.int64), np.ones((2, 1), np.float32),
        np.float32(0.1), np.float32(0.0), np.float32(1e-10),
    )  # fmt: skip
    if not np.isclose(table[1, 0], -0.1):
        raise RuntimeError(f"self-check failed: one step of the row update gave {table[1, 0]}, expected -0.1")
    return adagrad_momentum_rows
