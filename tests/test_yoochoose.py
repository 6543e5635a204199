"""The real YooChoose sample (../shared/data/yoochoose-100k): protocol counts, popularity, and the tuned preset."""

import pytest
from hydra.utils import instantiate

from conftest import compose_config
from lstm_rec.baselines import Popularity
from lstm_rec.evaluate import evaluate_checkpoint
from lstm_rec.evaluation import evaluate
from lstm_rec.train import train

pytestmark = pytest.mark.slow


def shared(yoochoose):
    return f"paths.shared_data={yoochoose.parent}"


def test_protocol_and_popularity_match_the_reference(yoochoose, tmp_path):
    cfg = compose_config("train", ["experiment=yoochoose_100k", shared(yoochoose)], tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule.n_items == 2933  # items of train_full
    metrics = evaluate(Popularity(datamodule.item_index.counts), datamodule.test_dataloader(), [5, 10, 20], "pop/")
    # shared/data/README.md: 10,152 predictions; popularity 0.049 / 0.074 / 0.089 and MRR@20 0.026
    assert metrics["pop/n_predictions"] == 10152
    assert metrics["pop/recall@5"] == pytest.approx(0.049, abs=5e-4)
    assert metrics["pop/recall@10"] == pytest.approx(0.074, abs=5e-4)
    assert metrics["pop/recall@20"] == pytest.approx(0.089, abs=5e-4)
    assert metrics["pop/mrr@20"] == pytest.approx(0.026, abs=5e-4)


def test_tuned_preset_reaches_the_bar(yoochoose, tmp_path):
    overrides = ["experiment=yoochoose_100k", shared(yoochoose), "callbacks.progress_bar=null"]
    metrics = train(compose_config("train", [*overrides, "trainer.enable_progress_bar=false"], tmp_path))
    assert metrics["test/n_predictions"] == 10152
    # The foundation bar: Recall@20 >= 0.65 and MRR@20 >= 0.33 (V-SKNN: 0.688 / 0.367).
    assert metrics["test/recall@20"] >= 0.65
    assert metrics["test/mrr@20"] >= 0.33


# shared/data/README.md: Recall@20 and MRR@20 of the session-rec implementations, pessimistic ties.
REFERENCE = {"pop": (0.089, 0.026), "sr": (0.618, 0.348), "sknn": (0.636, 0.319), "vsknn": (0.688, 0.367)}


def test_baselines_reproduce_the_reference_results(yoochoose, tmp_path):
    overrides = ["data=yoochoose_100k", shared(yoochoose), f"models=[{','.join(REFERENCE)}]"]
    results = evaluate_checkpoint(compose_config("eval", overrides, tmp_path))
    for name, (recall, mrr) in REFERENCE.items():
        assert results[name]["test/n_predictions"] == 10152
        assert results[name]["test/recall@20"] == pytest.approx(recall, abs=0.01), name
        assert results[name]["test/mrr@20"] == pytest.approx(mrr, abs=0.01), name
