"""The network: shapes, dropout, tied weights, repeat scores by hand, ensembles as the mean of their members, and
carrying a live session's state."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lstm_rec import layers
from lstm_rec.data import ItemIndex
from lstm_rec.layers import MemberLinear, candidate_scores, catalog_scores
from lstm_rec.model import MemberDropout, PrefixStates, SessionLSTM
from lstm_rec.module import SessionRecModule


def test_output_shapes():
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=16, num_layers=2, dropout=0.1, members=[{}, {}, {}])
    states = net.encode(torch.randint(0, 31, (4, 7)))
    assert states.hidden.shape == (3, 4, 7, 16) and states.recent is None
    assert net.score(states).shape == (4, 7, 30)
    assert net.score(states[:, -1]).shape == (4, 30)
    assert net.score_members(states.flat()).shape == (3, 28, 30)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_drops_a_share_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    dropout = MemberDropout([p, 0.0])  # the second member keeps everything
    x = torch.full((2, 100_000), 3.0, requires_grad=True)
    y = dropout(x)
    kept = y[0] != 0
    assert torch.allclose(y[0][kept], torch.tensor(3.0 / (1 - p))) and torch.equal(y[1], x[1])
    # 100,000 draws: the dropped share is within 5 standard deviations of p
    assert abs((~kept).float().mean().item() - p) < 5 * (p * (1 - p) / 100_000) ** 0.5
    y.sum().backward()
    assert torch.equal(x.grad[0], kept / (1 - p))  # the gradient goes through the kept units only, scaled alike
    assert torch.equal(dropout.eval()(x), x)
    with pytest.raises(ValueError, match=r"dropout rates must be in \[0, 1\)"):
        MemberDropout([1.0])


@pytest.mark.parametrize("hidden", [8, 16])
def test_tied_weights_score_with_the_input_embeddings(hidden):
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=hidden, tie_weights=True)
    assert not hasattr(net, "output")
    states = PrefixStates(torch.randn(1, 5, hidden))
    query = states.hidden[0] if hidden == 8 else net.to_embedding(states.hidden)[0]  # the identity when sizes match
    expected = query @ net.item_embedding[0, 1:].T + net.output_bias[0]
    torch.testing.assert_close(net.score(states), expected)


def test_right_padding_does_not_change_earlier_states():
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=16, members=[{}, {}]).eval()
    session, padded = torch.tensor([[3, 9, 4]]), torch.tensor([[3, 9, 4, 0, 0]])
    torch.testing.assert_close(net.encode(session).hidden, net.encode(padded).hidden[:, :, :3])


def repeat_net(tie_weights: bool) -> SessionLSTM:
    """A net whose repeat scores are the constants 1, 2, 3 for the latest, second and third latest click."""
    torch.manual_seed(0)
    net = SessionLSTM(n_items=12, embedding_dim=4, hidden=6, tie_weights=tie_weights, repeat_window=3).eval()
    with torch.no_grad():
        net.repeat_scores.weight.zero_()
        net.repeat_scores.bias.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    return net


@pytest.mark.parametrize("tie_weights", [False, True])
def test_repeat_scores_add_a_bonus_by_recency_to_the_latest_distinct_items(tie_weights):
    net = repeat_net(tie_weights)
    session = torch.tensor([[5, 7, 5, 9, 0]])  # item indices; score column = index - 1
    states = net.encode(session)
    assert states.recent[0].tolist() == [[5, 0, 0], [7, 5, 0], [5, 7, 5], [9, 5, 7], [0, 9, 5]]
    plain = net.score(PrefixStates(states.hidden, torch.zeros_like(states.recent)))  # no clicks: no bonus
    bonus = torch.zeros(5, 12)
    bonus[0, 4] = 1  # after [5]: 5 is the latest click
    bonus[1, 6], bonus[1, 4] = 1, 2  # after [5, 7]
    bonus[2, 4], bonus[2, 6] = 1, 2  # after [5, 7, 5]: 5 counts once, at its latest click
    bonus[3, 8], bonus[3, 4], bonus[3, 6] = 1, 2, 3  # after [5, 7, 5, 9]
    bonus[4, 8], bonus[4, 4] = 2, 3  # a padding step: its own click (0) gets nothing
    scored = net.score(states)
    torch.testing.assert_close(scored[0] - plain[0], bonus)
    # Scoring a subset of columns agrees with scoring them all, whether or not the recent items are among them,
    # with distinct columns (bonus placed by lookup; -1 is a placeholder) and with repeated ones (by matching).
    rows = states[0]
    for columns in ([6, 4, 8, 0], [4, 6, -1], [1, 2]):
        got = net.score_columns(rows, torch.tensor([columns]), distinct=True)[0]
        real = torch.tensor(columns) >= 0
        torch.testing.assert_close(got[:, real], scored[0][:, torch.tensor(columns)[real]])
    for columns in ([4, 6, 8, 0, 4], [1, 1]):
        got = net.score_columns(rows, torch.tensor([columns]))[0]
        torch.testing.assert_close(got, scored[0][:, columns])


def member_alone(net: SessionLSTM, m: int, settings: dict) -> SessionLSTM:
    """Member m of a tied ensemble as a network of its own, with its weights."""
    single = SessionLSTM(net.n_items, embedding_dim=4, hidden=6, tie_weights=True, **settings).eval()
    single.lstms[0].load_state_dict(net.lstms[m].state_dict())
    window = settings.get("repeat_window", 0)
    with torch.no_grad():
        for name in ("item_embedding", "output_bias", "to_embedding.weight", "to_embedding.bias"):
            single.get_parameter(name)[0] = net.get_parameter(name)[m]
        if window:
            single.repeat_scores.weight[0] = net.repeat_scores.weight[m, :window]
            single.repeat_scores.bias[0] = net.repeat_scores.bias[m, :window]
    return single


def test_an_ensemble_scores_the_mean_of_its_members_each_run_alone():
    torch.manual_seed(0)
    members = [{}, {"repeat_window": 2}, {"dropout": 0.4}]
    net = SessionLSTM(12, embedding_dim=4, hidden=6, tie_weights=True, members=members).eval()
    assert net.n_members == 3 and net.repeat_window == 2
    session = torch.tensor([[3, 4, 3, 8], [2, 2, 0, 0]])
    alone = [member_alone(net, m, settings) for m, settings in enumerate(members)]
    expected = sum(single.score(single.encode(session)) for single in alone) / 3
    torch.testing.assert_close(net.score(net.encode(session)), expected)
    with pytest.raises(ValueError, match=r"model.members\[1\] sets \['hidden'\]; a member can set only"):
        SessionLSTM(12, members=[{}, {"hidden": 5}])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_live_session_continues_from_its_carry(cell):
    torch.manual_seed(0)
    net = SessionLSTM(12, embedding_dim=4, hidden=6, num_layers=2, cell=cell, members=[{}, {"repeat_window": 3}])
    net = net.eval()
    session = torch.tensor([[3, 4, 3, 8, 1], [2, 2, 5, 6, 7]])
    whole = net.encode(session)
    carry = net.initial_carry(2)
    assert carry.h.shape == (2, 2, 12) and carry.recent.tolist() == [[0, 0, 0]] * 2
    parts = []
    for chunk in (session[:, :2], session[:, 2:3], session[:, 3:]):  # two clicks, one, then two more
        states, carry = net(chunk, carry)
        parts.append(states)
    torch.testing.assert_close(torch.cat([p.hidden for p in parts], dim=2), whole.hidden)
    assert torch.equal(torch.cat([p.recent for p in parts], dim=1), whole.recent)
    assert carry.recent.tolist() == [[1, 8, 3], [7, 6, 5]]


def test_padding_is_kept_out_of_the_loss():
    torch.manual_seed(0)
    module = SessionRecModule(ItemIndex.from_items(np.arange(20)), embedding_dim=8, hidden=8)
    batch = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = module.training_step(batch, 0)
    logits = module.net.score(module.net.encode(batch[:, :-1]))  # (2, 3, 20)
    # The real targets only: 2, 3, 4 after session 1's prefixes and 6 after [5]; columns are index - 1.
    picked = torch.stack([logits[0, 0], logits[0, 1], logits[0, 2], logits[1, 0]])
    torch.testing.assert_close(loss, F.cross_entropy(picked, torch.tensor([2, 3, 4, 6]) - 1))


def test_a_gru_network_runs_gru4rec_s_cell_and_carries_no_cell_state():
    torch.manual_seed(0)
    net = SessionLSTM(12, embedding_dim=4, hidden=6, cell="gru", tie_weights=True).eval()
    assert isinstance(net.lstms[0], torch.nn.GRU) and net.lstms[0].weight_hh_l0.shape == (18, 6)
    session = torch.tensor([[3, 4, 3, 8]])
    states, carry = net(session)
    # By hand: h' = (1 - z) * n + z * h with r, z = sigmoid(...), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    gru, h = net.lstms[0], torch.zeros(1, 6)
    for item in session[0]:
        x = net.item_embedding[0, item][None]
        gi, gh = x @ gru.weight_ih_l0.T + gru.bias_ih_l0, h @ gru.weight_hh_l0.T + gru.bias_hh_l0
        r, z = torch.sigmoid(gi[:, :6] + gh[:, :6]), torch.sigmoid(gi[:, 6:12] + gh[:, 6:12])
        h = (1 - z) * torch.tanh(gi[:, 12:] + r * gh[:, 12:]) + z * h
    torch.testing.assert_close(states.hidden[0, 0, -1], h[0])
    torch.testing.assert_close(carry.h[0], h)
    assert torch.equal(carry.c, torch.zeros_like(carry.c))
    with pytest.raises(ValueError, match=r"model.cell must be one of \['lstm', 'gru'\], got 'rnn'"):
        SessionLSTM(12, cell="rnn")
    with pytest.raises(ValueError, match=r"model.cell=auto is chosen from the training data by the training job"):
        SessionLSTM(12, cell="auto")


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3)])
def test_glorot_recurrent_init_draws_each_gate_on_its_own_fan_and_zero_biases(cell, gates):
    torch.manual_seed(0)
    net = SessionLSTM(50, embedding_dim=40, hidden=24, num_layers=2, cell=cell, recurrent_init="glorot")
    recurrent = net.lstms[0]
    for name, weight in recurrent.named_parameters():
        if name.startswith("bias"):
            assert torch.equal(weight, torch.zeros_like(weight)), name
            continue
        inputs = 40 if name == "weight_ih_l0" else 24
        assert weight.shape == (gates * 24, inputs)
        bound = (6 / (24 + inputs)) ** 0.5  # Glorot over one gate's (inputs, hidden), e.g. (6 / 64) ** 0.5 = 0.306
        for gate in weight.split(24):
            # Uniform on [-bound, bound]: inside it, spread to its ends, mean near 0, std bound / sqrt(3).
            assert gate.abs().max() <= bound and gate.abs().max() > 0.95 * bound, name
            assert abs(gate.std().item() - bound / 3**0.5) < 0.1 * bound, name
    # PyTorch's own init (the other choice, "torch") draws the biases too, all within 1 / sqrt(hidden).
    plain = SessionLSTM(50, embedding_dim=40, hidden=24, cell=cell).lstms[0]
    assert 0 < plain.bias_ih_l0.abs().max() <= 24**-0.5
    with pytest.raises(ValueError, match=r"model.recurrent_init must be one of \['torch', 'glorot'\], got 'xavier'"):
        SessionLSTM(12, recurrent_init="xavier")


def test_candidate_scores_are_bias_plus_the_product_with_their_gradients():
    # By hand: one member, one query (1, 2), rows (3, 4) and (5, 6), biases 0.5 and -1.
    scores = candidate_scores(
        torch.tensor([[0.5, -1.0]]), torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, 4], [5, 6]]])
    )
    assert torch.equal(scores, torch.tensor([[[11.5, 16.0]]]))
    # Against the product the other way round, values and gradients, in float64; the result and the rows' gradient
    # come out in their own (contiguous) layout.
    torch.manual_seed(0)
    bias, queries, rows = (
        torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in [(3, 9), (3, 5, 4), (3, 9, 4)]
    )
    upstream = torch.randn(3, 5, 9, dtype=torch.float64)
    scores = candidate_scores(bias, queries, rows)
    assert scores.shape == (3, 5, 9) and scores.is_contiguous()
    grads = torch.autograd.grad((scores * upstream).sum(), (bias, queries, rows))
    expected = torch.baddbmm(bias[:, None], queries, rows.transpose(1, 2))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, torch.autograd.grad((expected * upstream).sum(), (bias, queries, rows)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert grads[2].is_contiguous()


def test_catalog_scores_are_bias_plus_the_product_in_either_kernel(monkeypatch):
    # By hand: one query (1, 2), rows (3, 4) and (5, 6), biases 0.5 and -1; inference and training give the same.
    bias, query, rows = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4], [5, 6]])
    with torch.no_grad():
        assert torch.equal(catalog_scores(bias, query, rows), torch.tensor([[11.5, 16.0]]))
    assert torch.equal(catalog_scores(bias, query.requires_grad_(), rows), torch.tensor([[11.5, 16.0]]))
    # Inference on the CPU runs in oneDNN's kernel where torch has it; its values are BLAS's to rounding, and a
    # row's scores do not depend on the other rows of a batch of the same shape (serving's promise).
    calls = []
    if layers._ONEDNN_LINEAR is not None:
        real = layers._ONEDNN_LINEAR
        monkeypatch.setattr(layers, "_ONEDNN_LINEAR", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    bias, queries, rows = torch.randn(300), torch.randn(7, 16), torch.randn(300, 16)
    with torch.no_grad():
        scores = catalog_scores(bias, queries, rows)
        others = torch.cat([queries[:1], torch.randn(6, 16)])
        assert torch.equal(catalog_scores(bias, others, rows)[0], scores[0])
    assert len(calls) == (2 if layers._ONEDNN_LINEAR is not None else 0)
    torch.testing.assert_close(scores, torch.addmm(bias, queries, rows.T), rtol=1e-5, atol=1e-5)
    # With gradients, under autocast, and when traced for export, it is the BLAS product.
    queries.requires_grad_()
    (catalog_scores(bias, queries, rows) ** 2).sum().backward()
    expected = torch.autograd.grad((torch.addmm(bias, queries, rows.T) ** 2).sum(), queries)[0]
    torch.testing.assert_close(queries.grad, expected)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision computes as configured
        assert catalog_scores(bias, queries, rows).dtype == torch.bfloat16
    traced = torch.jit.trace(lambda q: catalog_scores(bias, q, rows), torch.randn(7, 16), check_trace=False)
    assert "aten::addmm" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    assert len(calls) == (2 if layers._ONEDNN_LINEAR is not None else 0)


def test_rowwise_member_linear_is_forward_and_independent_of_the_other_rows():
    # Serving's repeat scores (lstm_rec.serving.Recommender): a batched product's kernel may round a row
    # differently beside other rows; the rowwise form must not, and must give forward's values.
    torch.manual_seed(0)
    layer = MemberLinear(3, 224, 10)
    x = torch.randn(3, 8, 224)
    assert torch.allclose(layer.rowwise(x), layer(x), atol=1e-6)
    alone = layer.rowwise(x[:, :1])
    for others in (torch.randn(3, 7, 224), torch.zeros(3, 15, 224)):
        assert torch.equal(layer.rowwise(torch.cat([x[:, :1], others], dim=1))[:, :1], alone)
        assert torch.equal(layer.rowwise(torch.cat([others, x[:, :1]], dim=1))[:, -1:], alone)
