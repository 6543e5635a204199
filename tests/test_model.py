import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lstm_rec.data import ItemIndex
from lstm_rec.model import Dropout, SessionEnsemble, SessionLSTM
from lstm_rec.module import SessionRecModule


def test_output_shapes():
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=16, num_layers=2, dropout=0.1)
    states = net(torch.randint(0, 31, (4, 7)))
    assert states.shape == (4, 7, 16)
    assert net.score(states).shape == (4, 7, 30)
    assert net.score(states[:, -1]).shape == (4, 30)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_cpu_dropout_drops_a_share_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    dropout = Dropout(p)
    x = torch.full((200_000,), 3.0, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(3.0 / (1 - p)))
    # 200,000 draws: the dropped share is within 5 standard deviations of p
    assert abs((~kept).float().mean().item() - p) < 5 * (p * (1 - p) / 200_000) ** 0.5
    y.sum().backward()
    assert torch.equal(x.grad, kept / (1 - p))  # the gradient goes through the kept units only, scaled alike
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


@pytest.mark.parametrize("hidden", [8, 16])
def test_tied_weights_score_with_the_input_embeddings(hidden):
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=hidden, tie_weights=True)
    assert not hasattr(net, "output")
    states = torch.randn(5, hidden)
    expected = net.to_embedding(states) @ net.item_embedding.weight[1:].T + net.output_bias
    torch.testing.assert_close(net.score(states), expected)


def test_right_padding_does_not_change_earlier_states():
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=16).eval()
    session = torch.tensor([[3, 9, 4]])
    padded = torch.tensor([[3, 9, 4, 0, 0]])
    torch.testing.assert_close(net(session), net(padded)[:, :3])


def test_padding_is_kept_out_of_the_loss():
    torch.manual_seed(0)
    module = SessionRecModule(ItemIndex.from_items(np.arange(20)), embedding_dim=8, hidden=8)
    batch = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = module.training_step(batch, 0)
    logits = module.net.score(module.net(batch[:, :-1]))  # (2, 3, 20)
    # The real targets only: 2, 3, 4 after session 1's prefixes and 6 after [5]; columns are index - 1.
    picked = torch.stack([logits[0, 0], logits[0, 1], logits[0, 2], logits[1, 0]])
    expected = F.cross_entropy(picked, torch.tensor([2, 3, 4, 6]) - 1)
    torch.testing.assert_close(loss, expected)


def _repeat_net(tie_weights: bool = False) -> SessionLSTM:
    """A net whose repeat scores are the constants 1, 2, 3 for the latest, second and third latest click."""
    torch.manual_seed(0)
    net = SessionLSTM(n_items=12, embedding_dim=4, hidden=6, tie_weights=tie_weights, repeat_window=3).eval()
    with torch.no_grad():
        net.repeat_scores.weight.zero_()
        net.repeat_scores.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    return net


@pytest.mark.parametrize("tie_weights", [False, True])
def test_repeat_scores_add_a_bonus_by_recency_to_the_latest_distinct_items(tie_weights):
    net = _repeat_net(tie_weights)
    session = torch.tensor([[5, 7, 5, 9, 0]])  # item indices; score column = index - 1
    history = net.history(session)
    assert history[0].tolist() == [[5, 0, 0], [7, 5, 0], [5, 7, 5], [9, 5, 7], [0, 9, 5]]
    states = net(session)
    plain, scored = net.score(states, torch.zeros_like(history)), net.score(states, history)  # no clicks: no bonus
    bonus = torch.zeros(5, 12)
    bonus[0, 4] = 1  # after [5]: 5 is the latest click
    bonus[1, 6], bonus[1, 4] = 1, 2  # after [5, 7]
    bonus[2, 4], bonus[2, 6] = 1, 2  # after [5, 7, 5]: 5 counts once, at its latest click
    bonus[3, 8], bonus[3, 4], bonus[3, 6] = 1, 2, 3  # after [5, 7, 5, 9]
    bonus[4, 8], bonus[4, 4] = 2, 3  # a padding step: its own click (0) gets nothing
    torch.testing.assert_close(scored[0] - plain[0], bonus)
    # scoring a subset of columns agrees with scoring them all, whether or not the recent items are among
    # them, with distinct columns (bonus placed by lookup) and with repeated ones (bonus placed by matching)
    for columns in [torch.tensor([6, 4, 8, 0]), torch.tensor([4, 6]), torch.tensor([1, 2])]:
        scores = net.score_columns(states[0], columns, history[0], distinct=True)
        torch.testing.assert_close(scores, scored[0][:, columns])
    for columns in [torch.tensor([4, 6, 8, 0, 4]), torch.tensor([1, 1])]:
        torch.testing.assert_close(net.score_columns(states[0], columns, history[0]), scored[0][:, columns])
    with pytest.raises(ValueError, match="history"):
        net.score(states)


def test_ensemble_scores_are_the_mean_of_its_members_and_continue_from_a_state():
    torch.manual_seed(0)
    common = {"embedding_dim": 4, "hidden": 6, "tie_weights": True}
    net = SessionEnsemble(12, [{}, {"hidden": 5, "repeat_window": 2}, {"tie_weights": False}], common).eval()
    assert net.sizes == [6, 5, 6] and net.repeat_window == 2
    session = torch.tensor([[3, 4, 3, 8], [2, 2, 0, 0]])
    states, history = net(session), net.history(session)
    members = [m.score(m(session), history[..., : m.repeat_window or 1]) for m in net.members]
    torch.testing.assert_close(net.score(states, history), sum(members) / 3)
    # two clicks, then two more from the carried joined state, equal four at once
    first, state = net.forward_with_state(session[:, :2])
    second, _ = net.forward_with_state(session[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), states)
    with pytest.raises(ValueError, match="share num_layers"):
        SessionEnsemble(12, [{}, {"num_layers": 2}], common)


MEMBERS = ({}, {"repeat_window": 2})


def _ensemble_and_solo_losses(batches: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An ensemble's training loss on `batches` (one tensor: shared by the members), and each member's loss
    as a single network with the same weights on its own batch."""
    index = ItemIndex.from_items(np.arange(20))
    torch.manual_seed(0)
    module = SessionRecModule(index, embedding_dim=8, hidden=8, members=list(MEMBERS))
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    loss = module.training_step(batches[0] if len(batches) == 1 else batches, 0)
    per_member = batches if len(batches) == len(MEMBERS) else batches * len(MEMBERS)
    solo = []
    for settings, member, batch in zip(MEMBERS, module.net.members, per_member, strict=True):
        alone = SessionRecModule(index, embedding_dim=8, hidden=8, **settings)
        alone.net.load_state_dict(member.state_dict())
        alone.log = module.log
        solo.append(alone.training_step(batch, 0))
    return loss, solo


def test_ensemble_loss_is_the_sum_of_each_members_own_loss():
    loss, solo = _ensemble_and_solo_losses((torch.tensor([[1, 2, 3, 4], [5, 6, 5, 0]]),))
    torch.testing.assert_close(loss, solo[0] + solo[1])
    with pytest.raises(ValueError, match=r"model.members\[1\] sets \['hiden'\]"):
        SessionRecModule(ItemIndex.from_items(np.arange(20)), members=[{}, {"hiden": 3}])


@pytest.mark.parametrize("later_weight", [0.0, 0.3])
@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr_max"])
def test_members_sharing_negatives_lose_what_each_would_alone_on_the_same_draw(loss, later_weight):
    # One draw and one loss pass for all members equals each member's own loss on that same draw.
    index = ItemIndex.from_items(np.arange(20))
    settings = {"embedding_dim": 8, "hidden": 8, "loss": loss, "n_negatives": 6, "later_weight": later_weight}
    batch = torch.tensor([[1, 2, 3, 4, 2], [5, 6, 5, 0, 0], [7, 1, 9, 8, 0]])
    torch.manual_seed(0)
    module = SessionRecModule(index, members=list(MEMBERS), shared_negatives=True, **settings)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    torch.manual_seed(5)
    shared = module.training_step(batch, 0)
    solo = []
    for member_settings, member in zip(MEMBERS, module.net.members, strict=True):
        alone = SessionRecModule(index, **settings, **member_settings)
        alone.net.load_state_dict(member.state_dict())
        alone.log = module.log
        torch.manual_seed(5)  # the same draw of negatives
        solo.append(alone.training_step(batch, 0))
    torch.testing.assert_close(shared, solo[0] + solo[1])
    torch.manual_seed(5)
    module.hparams.shared_negatives = False  # a draw per member: the second member's draw differs
    assert module.training_step(batch, 0).item() != pytest.approx(shared.item())


def test_each_member_trains_on_its_own_batch_when_the_data_draws_one_per_member():
    batches = (torch.tensor([[1, 2, 3, 4], [5, 6, 5, 0]]), torch.tensor([[7, 8, 9], [9, 7, 0]]))
    loss, solo = _ensemble_and_solo_losses(batches)
    torch.testing.assert_close(loss, solo[0] + solo[1])
    module = SessionRecModule(ItemIndex.from_items(np.arange(20)), embedding_dim=8, hidden=8, members=list(MEMBERS))
    with pytest.raises(ValueError, match=r"set data\.member_orders to 2"):
        module.training_step(batches * 2, 0)


def test_the_item_prior_adds_to_inference_scores_only():
    torch.manual_seed(0)
    prior = torch.linspace(-1.0, 2.0, 12)
    single = SessionLSTM(n_items=12, embedding_dim=8, hidden=8, tie_weights=True)
    ensemble = SessionEnsemble(12, [{}, {"repeat_window": 2}], {"embedding_dim": 8, "hidden": 8})
    items = torch.randint(1, 13, (3, 5))
    for net in (single, ensemble):
        states = net(items)
        history = net.history(items) if net.repeat_window else None
        plain = net.score(states, history)
        net.item_prior.copy_(prior)
        torch.testing.assert_close(net.score(states, history), plain + prior)
        torch.testing.assert_close(net.score(states, history, prior=False), plain)
        # Training scores leave it out.
        columns = torch.tensor([0, 4, 7])
        flat = states.flatten(0, 1), None if history is None else history.flatten(0, 1)
        torch.testing.assert_close(net.score_columns(flat[0], columns, flat[1]), plain.flatten(0, 1)[:, columns])
    # The ensemble adds its own prior once, not each member's.
    assert all(member.item_prior.eq(0).all() for member in ensemble.members)


def test_setting_the_prior_swaps_in_a_new_tensor():
    # A service may score in one thread while another sets the prior: scoring holds the old tensor, whole.
    net = SessionLSTM(n_items=5, embedding_dim=4, hidden=4)
    old = net.item_prior
    net.set_recent_prior(np.array([0, 1, 0, 3, 0]), 0.5)
    assert old.eq(0).all()
    torch.testing.assert_close(net.item_prior, 0.5 * torch.log1p(torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0])))
    assert "item_prior" in dict(net.named_buffers())
    with pytest.raises(ValueError, match=r"one count per item \(5\), got \(4,\)"):
        net.set_recent_prior(np.ones(4), 0.5)
