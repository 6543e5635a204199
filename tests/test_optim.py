"""Adagrad with momentum (lstm_rec.optim.AdagradMomentum): the update by hand, dense against sparse, momentum 0
against torch.optim.Adagrad, and its checks."""

import copy
import math

import numpy as np
import pytest
import torch

from lstm_rec.optim import AdagradMomentum


def test_two_steps_by_hand():
    weight = torch.tensor([1.0, -2.0], requires_grad=True)
    optimizer = AdagradMomentum([weight], lr=0.1, momentum=0.5, eps=0.0)
    weight.grad = torch.tensor([3.0, 4.0])
    optimizer.step()
    # sum = g^2, velocity = g / |g| = sign(g): each weight moves by lr against its gradient's sign.
    assert weight.tolist() == pytest.approx([0.9, -2.1])
    weight.grad = torch.tensor([4.0, -3.0])
    optimizer.step()
    # sum = 9 + 16 = 25 for both; velocity = 0.5 * old + g / 5.
    v = [0.5 * 1 + 4 / 5, 0.5 * 1 - 3 / 5]
    assert weight.tolist() == pytest.approx([0.9 - 0.1 * v[0], -2.1 - 0.1 * v[1]])
    assert optimizer.state[weight]["sum"].tolist() == pytest.approx([25.0, 25.0])


def test_momentum_zero_is_torch_adagrad():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    mine = AdagradMomentum([ours], lr=0.2, initial_accumulator_value=0.1)
    reference = torch.optim.Adagrad([theirs], lr=0.2, initial_accumulator_value=0.1)
    for _ in range(4):
        grad = torch.randn(5, 3)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    torch.testing.assert_close(ours, theirs)


def test_parameters_updated_together_as_each_alone():
    """The dense parameters of a group take one batched update (_foreach ops): each ends exactly where an optimizer of
    its own puts it, with and without a gradient at a step."""
    torch.manual_seed(0)
    starts = [torch.randn(4, 3), torch.randn(7), torch.randn(2, 5)]
    together = [start.clone().requires_grad_() for start in starts]
    alone = [start.clone().requires_grad_() for start in starts]
    joint = AdagradMomentum(together, lr=0.1, momentum=0.4)
    singles = [AdagradMomentum([param], lr=0.1, momentum=0.4) for param in alone]
    for step in range(3):
        for i, (mine, theirs) in enumerate(zip(together, alone, strict=True)):
            skipped = step == 1 and i == 1
            grad = None if skipped else torch.randn(mine.shape)
            mine.grad, theirs.grad = grad, None if grad is None else grad.clone()
        joint.step()
        for single in singles:
            single.step()
    for mine, theirs, single in zip(together, alone, singles, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        for key in ("sum", "velocity"):
            torch.testing.assert_close(joint.state[mine][key], single.state[theirs][key], rtol=0, atol=0)


@pytest.mark.parametrize("shape, sparse_dims", [((6, 3), 1), ((2, 6, 3), 2)])
def test_sparse_rows_match_dense_where_looked_up(shape, sparse_dims):
    """A row-sparse gradient updates its rows as the dense update would, and leaves the others (value, sum and
    velocity) alone: an untouched row keeps its velocity for later, as GRU4Rec's indexed update does."""
    torch.manual_seed(1)
    start = torch.randn(*shape)
    dense, sparse = start.clone().requires_grad_(), start.clone().requires_grad_()
    dense_opt = AdagradMomentum([dense], lr=0.1, momentum=0.4)
    sparse_opt = AdagradMomentum([sparse], lr=0.1, momentum=0.4)
    for _ in range(3):  # every row looked up: the two agree exactly
        grad = torch.randn(*shape)
        dense.grad, sparse.grad = grad.clone(), grad.to_sparse(sparse_dims)
        dense_opt.step()
        sparse_opt.step()
    torch.testing.assert_close(sparse, dense)
    before = {key: sparse_opt.state[sparse][key].clone() for key in ("sum", "velocity")}
    value_before = sparse.detach().clone()
    grad = torch.zeros(*shape)
    looked_up = (slice(None), 2) if sparse_dims == 2 else (2,)
    grad[looked_up] = 1.0
    sparse.grad = grad.to_sparse(sparse_dims)
    sparse_opt.step()
    changed = (sparse.detach() != value_before).any(dim=-1)
    expected = torch.zeros(changed.shape, dtype=torch.bool)
    expected[looked_up] = True
    assert torch.equal(changed, expected)
    for key in ("sum", "velocity"):
        untouched = ~expected
        torch.testing.assert_close(sparse_opt.state[sparse][key][untouched], before[key][untouched])
    # The looked-up rows: sum + 1, velocity = 0.4 * old + 1 / sqrt(sum).
    row_sum = before["sum"][looked_up] + 1.0
    torch.testing.assert_close(sparse_opt.state[sparse]["sum"][looked_up], row_sum)
    velocity = 0.4 * before["velocity"][looked_up] + 1.0 / (row_sum.sqrt() + 1e-10)
    torch.testing.assert_close(sparse.detach()[looked_up], value_before[looked_up] - 0.1 * velocity)


def test_duplicate_sparse_entries_are_summed_first():
    weight = torch.zeros(3, 1, requires_grad=True)
    optimizer = AdagradMomentum([weight], lr=1.0, eps=0.0)
    with torch.sparse.check_sparse_tensor_invariants(enable=True):
        weight.grad = torch.sparse_coo_tensor([[1, 1]], torch.tensor([[1.0], [2.0]]), (3, 1))  # row 1 twice: g = 3
    optimizer.step()
    assert optimizer.state[weight]["sum"][:, 0].tolist() == [0.0, 9.0, 0.0]
    assert weight[:, 0].tolist() == pytest.approx([0.0, -1.0, 0.0])


def test_state_survives_a_checkpoint():
    torch.manual_seed(2)
    weight = torch.randn(4, 2, requires_grad=True)
    optimizer = AdagradMomentum([weight], lr=0.1, momentum=0.4)
    weight.grad = torch.randn(4, 2)
    optimizer.step()
    twin = weight.detach().clone().requires_grad_()
    restored = AdagradMomentum([twin], lr=0.1, momentum=0.4)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as saved and read back
    grad = torch.randn(4, 2)
    weight.grad, twin.grad = grad.clone(), grad.clone()
    optimizer.step()
    restored.step()
    torch.testing.assert_close(twin, weight)
    assert not math.isclose(restored.state[twin]["velocity"].abs().sum().item(), 0.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"momentum": 0.4, "weight_decay": 0.01}, "takes no weight decay"),
        ({"momentum": 0.4, "fused": True}, "no fused kernel"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        AdagradMomentum([torch.zeros(2, requires_grad=True)], lr=0.1, **settings)


def _sparse_steps(row_update: str, shape: tuple[int, ...], sparse_dims: int, dtype=torch.float32) -> tuple:
    """Four steps of sparse gradients with repeated rows (as a step's input and candidate lookups give them)."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()
    optimizer = AdagradMomentum([weight], lr=0.1, momentum=0.4, initial_accumulator_value=0.05, row_update=row_update)
    for _ in range(4):
        index = torch.stack([torch.randint(0, size, (40,), generator=generator) for size in shape[:sparse_dims]])
        values = torch.randn(40, *shape[sparse_dims:], generator=generator, dtype=dtype)
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            weight.grad = torch.sparse_coo_tensor(index, values, shape)  # uncoalesced: rows repeat
        optimizer.step()
    return weight.detach(), optimizer.state[weight]["sum"], optimizer.state[weight]["velocity"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, sparse_dims", [((30, 5), 1), ((2, 30, 5), 2), ((30, 2, 3), 1)])
def test_the_compiled_row_update_is_the_torch_one(shape, sparse_dims, threads, monkeypatch):
    """lstm_rec.row_kernel's one pass gives the torch ops' values, sums and velocities (within float32 rounding),
    repeated rows summed first, for a plain table, a member-stacked one and rows of more than one dimension, on one
    thread and on several (its threaded version)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what the kernel reads; torch's own stay
    for compiled, plain in zip(
        _sparse_steps("compiled", shape, sparse_dims), _sparse_steps("torch", shape, sparse_dims), strict=True
    ):
        torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-6)
    from lstm_rec import row_kernel

    assert row_kernel._threads_fail is None  # the threaded version ran, not its fallback


@pytest.mark.parametrize("threads", [1, 2])
def test_the_compiled_row_update_is_the_plain_arithmetic_to_the_bit(threads, monkeypatch):
    """Both versions of the compiled pass (one thread, threads) give exactly the float32 arithmetic of the update done
    row by row in NumPy, each row's repeated entries summed in their given order first: the pass may reorder how it
    walks the rows and the width, not the sums."""
    from lstm_rec import row_kernel

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(5)
    n_rows, width = 50, 37  # a width that is no multiple of a vector's lanes
    table, sums, velocities = (rng.standard_normal((n_rows, width), dtype=np.float32) for _ in range(3))
    sums = np.abs(sums) + 0.05
    rows = rng.integers(0, n_rows, 120)  # most rows repeat, some many times
    values = rng.standard_normal((len(rows), width), dtype=np.float32)
    lr, momentum, eps = np.float32(0.1), np.float32(0.4), np.float32(1e-10)
    expected = [table.copy(), sums.copy(), velocities.copy()]
    for row in np.unique(rows):
        grad = values[np.flatnonzero(rows == row)[0]].copy()
        for i in np.flatnonzero(rows == row)[1:]:  # in the given order
            grad += values[i]
        total = expected[1][row] + grad * grad
        expected[1][row] = total
        velocity = expected[2][row] * momentum + grad / (np.sqrt(total) + eps)
        expected[2][row] = velocity
        expected[0][row] -= lr * velocity
    got = [torch.from_numpy(array.copy()) for array in (table, sums, velocities)]
    row_kernel.update_rows(*got, torch.from_numpy(rows), torch.from_numpy(values), 0.1, 0.4, 1e-10)
    for name, want, have in zip(("values", "sums", "velocities"), expected, got, strict=True):
        assert np.array_equal(have.numpy(), want), name
    assert row_kernel._threads_fail is None


def test_auto_takes_the_torch_ops_where_the_compiled_pass_does_not_apply(caplog):
    caplog.set_level("INFO", logger="lstm_rec.optim")
    for auto, plain in zip(
        _sparse_steps("auto", (30, 5), 1, torch.float64), _sparse_steps("torch", (30, 5), 1, torch.float64), strict=True
    ):
        torch.testing.assert_close(auto, plain, rtol=0, atol=0)  # the same ops: bit for bit
    assert "torch ops: the table, its gradient or its state is not contiguous float32 on the CPU" in caplog.text
    with pytest.raises(ValueError, match="row_update=compiled takes contiguous float32 CPU tensors"):
        _sparse_steps("compiled", (30, 5), 1, torch.float64)


def test_without_numba_auto_falls_back_and_compiled_is_an_error(monkeypatch, caplog):
    from lstm_rec import row_kernel

    monkeypatch.setattr(row_kernel, "_kernel", None)
    monkeypatch.setattr(row_kernel, "_unavailable", "ModuleNotFoundError: No module named 'numba'")
    caplog.set_level("INFO", logger="lstm_rec.optim")
    for auto, plain in zip(_sparse_steps("auto", (30, 5), 1), _sparse_steps("torch", (30, 5), 1), strict=True):
        torch.testing.assert_close(auto, plain, rtol=0, atol=0)
    assert "sparse rows by torch ops: ModuleNotFoundError" in caplog.text
    with pytest.raises(ValueError, match=r"row_update=compiled: ModuleNotFoundError.*use auto or torch"):
        AdagradMomentum([torch.zeros(2, requires_grad=True)], lr=0.1, row_update="compiled")
    with pytest.raises(ValueError, match="row_update must be one of auto, compiled, torch, got 'numba'"):
        AdagradMomentum([torch.zeros(2, requires_grad=True)], lr=0.1, row_update="numba")
