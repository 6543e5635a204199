"""model.sparse_item_grad: the item table's gradient holds only the rows a batch looked up, and Adagrad updates those
rows alone; the training must be the one the dense gradient gives."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
import torch

from lstm_rec.data.sessions import ItemIndex
from lstm_rec.losses import BPRMax, CrossEntropy, SampledSoftmax
from lstm_rec.model import RowLookup
from lstm_rec.module import SessionRecModule, clip_sparse_gradients, match_fused_setting

N_ITEMS = 200
NETWORKS = {
    "tied": {"tie_weights": True},
    "tied ensemble with repeat scores": {"tie_weights": True, "members": [{}, {"repeat_window": 3}]},
    "untied": {"tie_weights": False},
}


def module(sparse, loss=None, optimizer=None, **network) -> SessionRecModule:
    torch.manual_seed(0)
    index = ItemIndex.from_items(np.repeat(np.arange(N_ITEMS), 3))
    loss = loss or BPRMax(n_negatives=64, sample_alpha=0.5, score_regularization=0.5)
    optimizer = optimizer or functools.partial(torch.optim.Adagrad, lr=0.1, fused=True)
    model = SessionRecModule(
        index, loss=loss, optimizer=optimizer, sparse_item_grad=sparse, embedding_dim=16, hidden=16, **network
    )
    if hasattr(model.loss, "resolve_layout"):
        model.loss.resolve_layout(torch.device("cpu"))
    return model


def train_steps(model: SessionRecModule, clip: float, steps: int = 15) -> torch.optim.Optimizer:
    """`steps` Adagrad steps on random sessions (some padded), clipped by norm as the trainer would clip."""
    optimizer = model.configure_optimizers()["optimizer"]
    batches, draws = torch.Generator().manual_seed(1), torch.manual_seed(5)
    assert draws is not None
    for step in range(steps):
        batch = torch.randint(1, N_ITEMS + 1, (8, 6), generator=batches)
        batch[:3, 4:] = 0
        optimizer.zero_grad()
        model.training_step(batch, step).backward()
        if model.net.sparse_item_grad:
            model.configure_gradient_clipping(optimizer, clip, "norm")
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("clip", [0.05, 100.0])  # clipping at every step, and never
def test_sparse_rows_train_the_weights_the_dense_gradient_trains(network, clip):
    dense, sparse = module(False, **NETWORKS[network]), module(True, **NETWORKS[network])
    dense_optimizer, sparse_optimizer = train_steps(dense, clip), train_steps(sparse, clip)
    assert sparse.net.item_embedding.grad.is_sparse and not dense.net.item_embedding.grad.is_sparse
    for name, weights in dense.state_dict().items():
        # Equal up to the order in which repeated rows' gradients are summed (coalesce against index_add).
        torch.testing.assert_close(sparse.state_dict()[name], weights, atol=1e-5, rtol=1e-5)
    # The optimizers' row sums too: a checkpoint of either resumes the other.
    for dense_state, sparse_state in zip(dense_optimizer.state.values(), sparse_optimizer.state.values(), strict=True):
        torch.testing.assert_close(sparse_state["sum"], dense_state["sum"], atol=1e-6, rtol=1e-5)
    # Rows that no batch looked up kept their initial values and a zero sum.
    table = sparse.net.item_embedding
    untouched = sparse_optimizer.state[table]["sum"].abs().sum(-1) == 0
    assert untouched.any() and torch.equal(
        table.detach()[untouched], module(True, **NETWORKS[network]).net.item_embedding.detach()[untouched]
    )


def test_clipping_sparse_gradients_equals_clipping_their_dense_form():
    torch.manual_seed(3)
    index = torch.tensor([[0, 0, 1, 1], [2, 5, 2, 7]])  # row 2 of member 0... and a repeated (1, 2)
    values = torch.randn(4, 3)
    sparse = torch.nn.Parameter(torch.zeros(2, 8, 3))
    sparse.grad = torch.sparse_coo_tensor(torch.cat([index, index], 1), torch.cat([values, values]), (2, 8, 3))
    dense_weight = torch.nn.Parameter(torch.zeros(4))
    dense_weight.grad = torch.randn(4)
    twin = torch.nn.Parameter(torch.zeros(2, 8, 3))
    twin.grad = sparse.grad.to_dense()
    twin_weight = torch.nn.Parameter(torch.zeros(4))
    twin_weight.grad = dense_weight.grad.clone()
    clip_sparse_gradients([sparse, dense_weight], 0.5, "norm")
    torch.nn.utils.clip_grad_norm_([twin, twin_weight], 0.5)
    torch.testing.assert_close(sparse.grad.to_dense(), twin.grad)
    torch.testing.assert_close(dense_weight.grad, twin_weight.grad)
    clip_sparse_gradients([sparse], 0.01, "value")
    assert sparse.grad.coalesce().values().abs().max() == pytest.approx(0.01)


def test_auto_picks_sparse_rows_for_adagrad_with_a_sampled_loss_and_says_why_not_otherwise(caplog):
    with caplog.at_level(logging.INFO, logger="lstm_rec.module"):
        assert module("auto")._use_sparse_rows()
        assert module("auto", loss=SampledSoftmax(n_negatives=32))._use_sparse_rows()
        assert not module("auto", loss=CrossEntropy())._use_sparse_rows()
        assert not module("auto", optimizer=functools.partial(torch.optim.Adam, lr=0.01))._use_sparse_rows()
        decay = functools.partial(torch.optim.Adagrad, lr=0.1, weight_decay=1e-4)
        assert not module("auto", optimizer=decay)._use_sparse_rows()
        assert not module(False)._use_sparse_rows()
    assert "model.sparse_item_grad=auto: sparse" in caplog.text
    assert "dense: the full-softmax loss scores every item" in caplog.text
    assert "dense: the optimizer is not Adagrad" in caplog.text
    assert "dense: Adagrad's weight_decay is not 0" in caplog.text


def test_forcing_sparse_rows_where_they_cannot_apply_names_the_reason():
    adam = functools.partial(torch.optim.Adam, lr=0.01)
    with pytest.raises(ValueError, match=r"model.sparse_item_grad=true cannot apply: the optimizer is not Adagrad"):
        module(True, optimizer=adam).configure_optimizers()
    with pytest.raises(ValueError, match="sparse_item_grad must be true, false or auto, got 'yes'"):
        module("yes")


def test_evaluation_and_inference_take_the_plain_lookup(monkeypatch):
    model = module(True)
    model.configure_optimizers()
    items = torch.randint(1, N_ITEMS + 1, (4, 5))

    def refuse(*args):
        raise AssertionError("the sparse lookup ran")

    monkeypatch.setattr(RowLookup, "apply", refuse)
    with torch.no_grad():
        model.net.encode(items)  # no gradient: the plain lookup
    with pytest.raises(AssertionError, match="the sparse lookup ran"):
        model.net.encode(items)


def test_a_checkpoint_of_the_fused_dense_update_resumes_into_the_sparse_one():
    dense, sparse = module(False), module(True)
    dense_optimizer = train_steps(dense, 1.0, steps=2)
    assert dense_optimizer.param_groups[0]["fused"]
    sparse_optimizer = sparse.configure_optimizers()["optimizer"]
    sparse_optimizer.load_state_dict(dense_optimizer.state_dict())  # as Lightning restores it, "fused" and all
    assert sparse_optimizer.param_groups[0]["fused"]
    match_fused_setting(sparse_optimizer, sparse=True)
    sparse.training_step(torch.randint(1, N_ITEMS + 1, (8, 6)), 0).backward()
    sparse_optimizer.step()  # the fused Adagrad would refuse the sparse gradient
    assert not sparse_optimizer.param_groups[0]["fused"]


def test_adagrad_with_momentum_takes_sparse_rows_and_at_momentum_zero_trains_as_adagrad():
    from lstm_rec.optim import AdagradMomentum

    momentum = functools.partial(AdagradMomentum, lr=0.1, momentum=0.4, fused=False)
    model = module("auto", optimizer=momentum)
    assert model._use_sparse_rows()
    optimizer = train_steps(model, clip=100.0)
    assert model.net.item_embedding.grad.is_sparse
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(state["velocity"].abs().sum() > 0 for state in optimizer.state.values())
    # Momentum 0, sparse rows: the same weights as torch's dense Adagrad (momentum's dense and sparse updates
    # differ by design: rows no batch looks up keep their velocity in the sparse one).
    plain = module(True, optimizer=functools.partial(AdagradMomentum, lr=0.1, momentum=0.0, fused=False))
    reference = module(False)
    train_steps(plain, clip=100.0)
    train_steps(reference, clip=100.0)
    for name, weights in reference.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[name], weights, atol=1e-5, rtol=1e-5)
