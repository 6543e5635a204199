"""A million-item catalog: sampled-softmax training and evaluation that scores in chunks of bounded size."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, compose_config
from lstm_rec.checkpoint import load_network
from lstm_rec.evaluation import collect_ranks, metrics_of
from lstm_rec.jobs.train import train
from lstm_rec.metrics import target_ranks

pytestmark = pytest.mark.slow

N_ITEMS = 1_000_000
MAX_SCORES = 2**22  # four rows of a million scores


@pytest.fixture(scope="module")
def million_items(tmp_path_factory):
    """Training pairs that cover every item once; 40 test sessions of 5 clicks among them."""
    folder = tmp_path_factory.mktemp("million")
    rng = np.random.default_rng(0)
    items = rng.permutation(N_ITEMS) + 10**9  # ids unlike indices
    train = pd.DataFrame({"SessionId": np.arange(N_ITEMS) // 2, "ItemId": items, "Time": np.arange(N_ITEMS) * 1.0})
    test_items = rng.choice(items, 200)
    test = pd.DataFrame({"SessionId": np.arange(200) // 5, "ItemId": test_items, "Time": 2e6 + np.arange(200)})
    train.to_parquet(folder / "train.parquet")
    test.to_parquet(folder / "test.parquet")
    return folder


def test_a_million_items_train_with_sampled_softmax_and_evaluate_in_chunks(million_items, tmp_path, monkeypatch):
    overrides = [
        *(o for o in TINY if not o.startswith("data.")), "data=files", f"data.train={million_items / 'train.parquet'}",
        f"data.valid={million_items / 'test.parquet'}", f"data.test={million_items / 'test.parquet'}",
        "data.batch_size=256", "model/loss=sampled_softmax", "model.tie_weights=true", f"model.max_scores={MAX_SCORES}",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=3", "callbacks.model_checkpoint.save_last=false",
        # The prior's and the blend's choices rank through the same chunked Ranking (test_prior_auto.py, test_blend.py);
        # here their 20-odd candidates would only rank the million items again (15 of the test's 40 s).
        "~prior", "~blend",
    ]  # fmt: skip
    metrics = train(compose_config("train", overrides, tmp_path / "run"))
    model = load_network(metrics["checkpoint"])
    net = model.network
    assert net.n_items == N_ITEMS

    # Evaluation never holds more than max_scores scores: spy on every score call.
    rows_scored = []
    score = net.score
    monkeypatch.setattr(net, "score", lambda states: rows_scored.append(len(states)) or score(states))
    batch = torch.as_tensor(model.item_index.lookup(pd.read_parquet(million_items / "test.parquet").ItemId))
    batch = batch.reshape(40, 5)
    ranked = collect_ranks(net, [batch], k_max=20, max_scores=MAX_SCORES)
    assert max(rows_scored) * N_ITEMS <= MAX_SCORES and sum(rows_scored) == 160

    # The chunked ranks are the ranks of the whole score matrix, and the run's own test metrics.
    with torch.no_grad():
        states = net.encode(batch[:, :-1]).flat()[:8]
        expected = target_ranks(score(states), batch[:, 1:].flatten()[:8] - 1, "pessimistic")
    torch.testing.assert_close(ranked.ranks[:8], expected.to(ranked.ranks.dtype))
    for name, value in metrics_of(ranked, [20], "test/").items():
        assert metrics[name] == pytest.approx(value, abs=1e-9)
