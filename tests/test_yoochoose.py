"""The real YooChoose sample (../shared/data/yoochoose-100k): protocol counts, popularity, and the tuned preset."""

import pytest
from hydra.utils import instantiate

from conftest import compose_config
from lstm_rec.baselines import Popularity
from lstm_rec.evaluation import evaluate
from lstm_rec.jobs.compare import compare
from lstm_rec.jobs.train import train

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


# The yoochoose_100k preset on its tuning split (train_tr -> train_valid), cut to 1 epoch: its warm-up and
# cosine decay then span that epoch; no per-epoch validation, the last weights are tested. Measured on the 2-core CPU
#   python scripts/train.py experiment=yoochoose_100k_tuning trainer.max_epochs=1 +trainer.limit_val_batches=0
#     test_ckpt=last num_threads=1
# (num_threads=2 gives the same four digits; one thread suits the suite's two pytest-xdist workers).
# The full 14-epoch preset scores 0.670 / 0.366 on train_valid (docs/tuning-log.md). The numbers follow the seeded
# random streams: drawing the negatives from the alias table instead of torch.multinomial (the same law) moved them
# from 0.5238 / 0.3267 to 0.5372 / 0.3296, as another seed would.
SHORT_RUN = {"recall@20": 0.5372, "mrr@20": 0.3296}
SHORT_RUN_TOLERANCE = 0.005  # the same CPU build gives the same numbers; this covers other CPUs' float sums


def test_preset_reproduces_its_validation_score_on_a_short_run(yoochoose, tmp_path):
    overrides = ["experiment=yoochoose_100k_tuning", shared(yoochoose), "trainer.max_epochs=1", "num_threads=1"]
    overrides += ["+trainer.limit_val_batches=0", "test_ckpt=last"]
    overrides += ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert metrics["test/n_predictions"] == 12455  # the tuning "test" is train_valid
    for name, value in SHORT_RUN.items():
        assert metrics[f"test/{name}"] == pytest.approx(value, abs=SHORT_RUN_TOLERANCE), name
    # and far above popularity on the same predictions
    assert metrics["test/recall@20"] > 5 * metrics["pop/test/recall@20"]


# shared/data/README.md: Recall@20 and MRR@20 of the session-rec implementations, pessimistic ties.
REFERENCE = {"pop": (0.089, 0.026), "sr": (0.618, 0.348), "sknn": (0.636, 0.319), "vsknn": (0.688, 0.367)}


def test_baselines_reproduce_the_reference_results(yoochoose, tmp_path):
    overrides = ["data=yoochoose_100k", shared(yoochoose), f"models=[{','.join(REFERENCE)}]"]
    results = compare(compose_config("eval", overrides, tmp_path))
    for name, (recall, mrr) in REFERENCE.items():
        assert results[name]["test/n_predictions"] == 10152
        assert results[name]["test/recall@20"] == pytest.approx(recall, abs=0.01), name
        assert results[name]["test/mrr@20"] == pytest.approx(mrr, abs=0.01), name
