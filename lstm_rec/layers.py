"""Layers with one set of weights per ensemble member, applied to (M, ...) tensors in one batched computation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def candidate_scores(bias: Tensor, queries: Tensor, weight: Tensor) -> Tensor:
    """bias (M, C) + queries (M, N, D) @ weight (M, C, D)^T -> (M, N, C) scores of C candidate rows, contiguous.

    The product runs as weight @ queries^T, so that its backward gives the rows' gradient (M, C, D) in their own
    layout, one product of the (M, C, N) gradient with the queries, which the item table's sparse update takes as it
    is. The other way round (the rows' gradient as a transposed (D, C) product, then copied) made a default training
    step 12-20 % slower on 2 CPU threads (docs/model.md#candidate-scores). The values agree to rounding. On an
    accelerator the product keeps the queries-first order, which needs no copy of the scores (not measured there).
    """
    if weight.device.type != "cpu":
        return torch.baddbmm(bias[:, None], queries, weight.transpose(1, 2))
    return torch.baddbmm(bias[:, :, None], weight, queries.transpose(1, 2)).transpose(1, 2).contiguous()


def _onednn_linear() -> Any:
    """PyTorch's oneDNN linear kernel, or None where this build of torch lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise.default if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


def catalog_scores(bias: Tensor, queries: Tensor, rows: Tensor) -> Tensor:
    """bias (n,) + queries (N, D) @ rows (n, D)^T -> (N, n): every catalog item's score, for inference.

    On the CPU, without gradients, in float32, the product runs in PyTorch's oneDNN linear kernel: on a 2-core AMD
    EPYC it scored the 36k-item catalog 1.7-2.4x faster than the BLAS (MKL) product, whose float32 kernel there
    runs at under half the machine's speed (docs/model.md#catalog-scores). Elsewhere (gradients, accelerators,
    CPU autocast, tracing or compiling for export, a torch without oneDNN) it is the BLAS product. The two agree to
    rounding.
    """
    fast = (
        _ONEDNN_LINEAR is not None
        and queries.device.type == "cpu"
        and queries.dtype == rows.dtype == bias.dtype == torch.float32
        and not (torch.is_grad_enabled() and (queries.requires_grad or rows.requires_grad or bias.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )
    if fast:
        return _ONEDNN_LINEAR(queries.contiguous(), rows.contiguous(), bias.contiguous(), "none", [], "")
    return torch.addmm(bias, queries, rows.T)


class MemberLinear(nn.Module):
    """One linear map per member, applied to that member's inputs: (M, N, in) -> (M, N, out), one batched
    product. Initialised like nn.Linear."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features))
        bound = in_features**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias[:, None], x, self.weight.transpose(1, 2))

    def rowwise(self, x: Tensor) -> Tensor:
        """forward's values, each row summed on its own (an elementwise product, reduced over the input): unlike a
        batched product's kernels, the rounding of a row does not depend on the other rows. Memory: M * N * out *
        in, so for a few rows (serving), not for training."""
        return (x[:, :, None, :] * self.weight[:, None]).sum(-1) + self.bias[:, None]

    def columns(self, x: Tensor, columns: Tensor) -> Tensor:
        """Only the outputs in `columns` (M, C): (M, N, in) -> (M, N, C)."""
        members, out_features, in_features = self.weight.shape
        offsets = torch.arange(members, device=columns.device)[:, None] * out_features
        weight = F.embedding(columns + offsets, self.weight.view(-1, in_features))  # (M, C, in)
        return candidate_scores(self.bias.gather(1, columns), x, weight)


class MemberDropout(nn.Module):
    """Dropout over (M, ...) tensors at each member's own rate. The mask compares uniforms with the rate: on the
    CPU that is 2-3x faster (forward and backward) than the Bernoulli draw of nn.Dropout."""

    def __init__(self, rates: list[float]) -> None:
        super().__init__()
        if not all(0.0 <= rate < 1.0 for rate in rates):
            raise ValueError(f"dropout rates must be in [0, 1), got {rates}")
        self.register_buffer("rates", torch.tensor(rates), persistent=False)
        self.active = any(rate > 0 for rate in rates)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.active):
            return x
        rates = self.rates.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        return x * ((torch.rand_like(x) >= rates) / (1.0 - rates))
