import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lstm_rec.data import ItemIndex
from lstm_rec.model import SessionLSTM
from lstm_rec.module import SessionRecModule


def test_output_shapes():
    net = SessionLSTM(n_items=30, embedding_dim=8, hidden=16, num_layers=2, dropout=0.1)
    states = net(torch.randint(0, 31, (4, 7)))
    assert states.shape == (4, 7, 16)
    assert net.score(states).shape == (4, 7, 30)
    assert net.score(states[:, -1]).shape == (4, 30)


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
