"""Adagrad with heavy-ball momentum, dense and row-sparse (model/optimizer=adagrad_momentum).

torch.optim.Adagrad has no momentum. GRU4Rec trains with Adagrad plus momentum (its IndexedAdagradM), where a
row of the item table that a step does not look up keeps its velocity until it is looked up again. This is the
same update, written for lstm_rec:

    sum += g^2;  velocity = momentum * velocity + g / (sqrt(sum) + eps);  param -= lr * velocity

for every element of a dense gradient, and for the looked-up rows alone of a sparse one. With momentum 0 it is
torch.optim.Adagrad without lr_decay; model/optimizer=adagrad is then faster (its fused kernel). A sparse gradient
of a float32 CPU table takes one compiled pass (lstm_rec.row_kernel) unless `row_update="torch"`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from lstm_rec import row_kernel

log = logging.getLogger(__name__)

ROW_UPDATES = ("auto", "compiled", "torch")


class AdagradMomentum(torch.optim.Adagrad):
    """Adagrad (`lr`, `eps`, `initial_accumulator_value`) with heavy-ball `momentum` in [0, 1).

    Takes dense and sparse gradients (a sparse one updates only its rows: their squared-gradient sums, their
    velocities and their values). No weight decay, lr decay or fused kernel. `row_update` picks how a sparse
    gradient's rows are updated: "compiled" (lstm_rec.row_kernel, float32 CPU tensors), "torch" (torch ops, any
    device), or "auto": compiled where it applies and numba is there, else torch. The two agree within rounding.
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        momentum: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        fused: bool | None = None,
        row_update: str = "auto",
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"model.optimizer.momentum must be in [0, 1), got {momentum}")
        if weight_decay:
            raise ValueError(
                f"model.optimizer.weight_decay={weight_decay}: Adagrad with momentum takes no weight decay "
                "(model/optimizer=adagrad, torch.optim.Adagrad, does)"
            )
        if fused:
            raise ValueError("Adagrad with momentum has no fused kernel: set model.optimizer.fused=false")
        if row_update not in ROW_UPDATES:
            raise ValueError(f"model.optimizer.row_update must be one of {', '.join(ROW_UPDATES)}, got {row_update!r}")
        if row_update == "compiled" and row_kernel.available() is not None:
            raise ValueError(f"model.optimizer.row_update=compiled: {row_kernel.available()}; use auto or torch")
        super().__init__(params, lr=lr, initial_accumulator_value=initial_accumulator_value, eps=eps)
        for group in self.param_groups:
            group["momentum"] = momentum
        self.row_update = row_update
        self._told: set[str] = set()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, eps = group["lr"], group["momentum"], group["eps"]
            dense, dense_states = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                state["step"] += 1
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(param)
                if not param.grad.is_sparse:
                    dense.append(param)
                    dense_states.append(state)
                elif self._compiled_rows(param, state):
                    table, rows, values = _row_view(param, param.grad)
                    row_kernel.update_rows(table, *(state[k].view(table.shape) for k in ("sum", "velocity")),
                                           rows, values, lr, momentum, eps)  # fmt: skip
                else:
                    _sparse_step(param, param.grad.coalesce(), state, lr, momentum, eps)
            if dense:
                _dense_steps(dense, dense_states, lr, momentum, eps)
        return loss

    def _compiled_rows(self, param: Tensor, state: dict) -> bool:
        """Whether `param`'s sparse gradient takes the compiled row update (said once per reason in the log)."""
        if self.row_update == "torch":
            return False
        tables = (param, state["sum"], state["velocity"])  # viewed in place as (rows, width): contiguous
        fits = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (*tables, param.grad))
        fits = fits and all(t.is_contiguous() for t in tables)
        if self.row_update == "compiled" and not fits:
            raise ValueError(
                f"model.optimizer.row_update=compiled takes contiguous float32 CPU tensors, got a {param.dtype} "
                f"tensor on {param.device}; use auto or torch"
            )
        why = None if fits else "the table, its gradient or its state is not contiguous float32 on the CPU"
        why = why or row_kernel.available()
        choice = "torch ops: " + why if why else "one compiled pass (lstm_rec.row_kernel)"
        if choice not in self._told:
            self._told.add(choice)
            log.info("model.optimizer.row_update=%s: sparse rows by %s", self.row_update, choice)
        return why is None


def _row_view(param: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(R, W) view of `param`, the flat row index (N,) and the values (N, W) of its uncoalesced sparse `grad`,
    whose first k dimensions are sparse (k = 2 for a member-stacked item table)."""
    rows = _flat_rows(param.shape, grad._indices())
    table = param.view(math.prod(param.shape[: grad.sparse_dim()]), -1)
    return table, rows.contiguous(), grad._values().reshape(len(rows), table.shape[1])


def _flat_rows(shape: torch.Size, indices: Tensor) -> Tensor:
    """The flat row index (N,) of sparse `indices` (k, N) over a table of `shape` flattened in its first k
    dimensions."""
    rows = indices[0]
    for dim in range(1, len(indices)):
        rows = rows * shape[dim] + indices[dim]
    return rows


def _dense_steps(params: list[Tensor], states: list[dict], lr: float, momentum: float, eps: float) -> None:
    """The update of dense gradients, all parameters at once (torch's _foreach ops: the elementwise arithmetic of one
    parameter at a time, without a dispatch per parameter and operation)."""
    grads = [param.grad for param in params]
    sums, velocities = [state["sum"] for state in states], [state["velocity"] for state in states]
    torch._foreach_addcmul_(sums, grads, grads)
    roots = torch._foreach_sqrt(sums)
    torch._foreach_add_(roots, eps)
    torch._foreach_mul_(velocities, momentum)
    torch._foreach_addcdiv_(velocities, grads, roots)
    torch._foreach_add_(params, velocities, alpha=-lr)


def _sparse_step(param: Tensor, grad: Tensor, state: dict, lr: float, momentum: float, eps: float) -> None:
    """The update of the rows of a coalesced `grad`, sparse in its first k dimensions (k = 2 for a member-stacked
    item table): those are flattened into one row index over views sharing the parameter's and the state's
    memory."""
    rows = _flat_rows(param.shape, grad.indices())
    row_shape = (-1, *param.shape[grad.sparse_dim() :])
    table, sums, velocities = param.view(row_shape), state["sum"].view(row_shape), state["velocity"].view(row_shape)
    values = grad.values()
    total = sums.index_select(0, rows).addcmul_(values, values)
    sums.index_copy_(0, rows, total)
    velocity = velocities.index_select(0, rows).mul_(momentum).add_(values / total.sqrt_().add_(eps))
    velocities.index_copy_(0, rows, velocity)
    table.index_add_(0, rows, velocity, alpha=-lr)
