"""Very long sessions: baselines score prefixes in memory linear in the clicks, and the evaluation job with a
10,000-click session stays within its memory bound."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from lstm_rec.baselines import VSKNN, ItemKNN, Markov, Popularity, SequentialRules, SessionKNN, SessionPopularity
from lstm_rec.baselines.prefixes import ClickIndex
from lstm_rec.checkpoint import write_entry
from lstm_rec.data.sessions import ItemIndex, Sessions
from lstm_rec.evaluation import rank_batch
from lstm_rec.model import build_network

GIB = 2**30
LONG_SESSION = 10_000


def test_prefix_entries_are_the_distinct_items_of_each_prefix():
    rng = np.random.default_rng(0)
    items = rng.integers(1, 8, (5, 30))
    for row, length in enumerate([30, 17, 1, 0, 9]):
        items[row, length:] = 0
    clicks = ClickIndex.of(items)
    rows, ends = np.divmod(np.arange(items.size), items.shape[1])
    entries = clicks.entries(rows, ends)
    for n, (row, end) in enumerate(zip(rows, ends, strict=True)):
        prefix = items[row, : end + 1][items[row, : end + 1] > 0]
        mine = entries.prefix == n
        expected = {int(i) - 1: (int((prefix == i).sum()), int(np.flatnonzero(prefix == i)[-1]) + 1) for i in prefix}
        pairs = zip(entries.count[mine].tolist(), entries.last[mine].tolist(), strict=True)
        found = dict(zip(entries.column[mine].tolist(), pairs, strict=True))
        assert found == expected, (row, end)


# Ten training sessions over six items: more sessions than items, so a kNN baseline's (prefix, session) pairs can
# outgrow the scores asked for and be compared in several runs.
TRAIN = Sessions(
    items=np.array([1, 2, 3, 2, 3, 4, 1, 4, 5, 2, 6, 1, 6, 3, 2, 5, 4, 6, 6, 1, 3, 1, 2, 5, 4]),
    offsets=np.array([0, 3, 6, 8, 10, 14, 16, 19, 21, 23, 25]),
    times=np.arange(25.0),
)
BASELINES = [Popularity, SessionPopularity, Markov, SequentialRules, ItemKNN, SessionKNN, VSKNN]


@pytest.mark.parametrize("baseline", BASELINES, ids=lambda b: b.__name__)
def test_every_prefix_of_a_batch_scores_as_the_prefix_spelled_out(baseline):
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.integers(1, 7, (3, 40)))
    batch[1, 25:], batch[2, 6:] = 0, 0
    fitted = baseline().fit(TRAIN, 6)
    # One prefix per chunk; two (the kNN baselines compare them in one or two runs); all at once.
    for max_scores in (6, 12, 2**20):
        ranked = rank_batch(fitted, batch, k_max=6, max_scores=max_scores)
        rows, ends = (batch[:, 1:] > 0).nonzero(as_tuple=True)
        spelled_out = [batch[row, : end + 1].numpy() for row, end in zip(rows, ends, strict=True)]
        scores = np.stack([fitted.score_prefixes(prefix[None])[0] for prefix in spelled_out]).astype(np.float32)
        targets = batch[:, 1:][batch[:, 1:] > 0] - 1
        expected = (scores >= scores[np.arange(len(targets)), targets][:, None]).sum(axis=1)  # pessimistic ranks
        assert ranked.ranks.tolist() == expected.tolist()


def write_untrained_checkpoint(path, train_file):
    """A small LSTM over the items of `train_file`: scoring cost, not quality, is what the memory test needs."""
    index = ItemIndex.from_items(pd.read_csv(train_file, sep="\t")["ItemId"])
    settings = {"embedding_dim": 32, "hidden": 32}
    network = build_network(len(index), settings)
    checkpoint = {"state_dict": {f"net.{name}": value for name, value in network.state_dict().items()}}
    write_entry(checkpoint, index, settings, None, 0.0)
    torch.save(checkpoint, path)
    return path


# Runs a command and prints its peak resident memory in KiB (Linux): the only child of a fresh process.
PEAK = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
PEAK += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"

# Recall@20 and MRR@20 on yoochoose-100k's test set plus the long session below, as the code before prefixes were
# held by reference (commit 3ada484) ranked them at a peak of 2.3 GB: the same to the last digit.
BEFORE = {
    "pop": (0.09547913254925314, 0.030081818286899334),
    "spop": (0.6878566820505185, 0.2785665504279693),
    "markov": (0.340975633963575, 0.19279183258681007),
    "sr": (0.35973400823780455, 0.20785799106075833),
    "itemknn": (0.19646667659173242, 0.08406095943031476),
    "sknn": (0.6241377599126594, 0.2608771480693308),
    "vsknn": (0.5606669644186393, 0.2738872129452139),
}


@pytest.mark.slow
def test_evaluate_job_with_a_10000_click_session_peaks_under_1_5_gib(yoochoose, tmp_path):
    """Every baseline and an LSTM checkpoint on yoochoose-100k's test set plus one 10,000-click session.

    Memory grows with the clicks, not their square: the peak stays under the issue's 4 GiB, and under the
    1.5 GiB that the two (T, T) prefix arrays of the session alone held before.
    """
    train_file, test = yoochoose / "train_full.tsv", pd.read_csv(yoochoose / "test.tsv", sep="\t")
    rng = np.random.default_rng(0)  # a crawler paging over 10 of the test items
    clicks = rng.choice(rng.choice(test["ItemId"].unique(), 10, replace=False), LONG_SESSION)
    times = test["Time"].max() + np.arange(LONG_SESSION)
    long = pd.DataFrame({"SessionId": test["SessionId"].max() + 1, "ItemId": clicks, "Time": times})
    pd.concat([test, long]).to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    checkpoint = write_untrained_checkpoint(tmp_path / "lstm.ckpt", train_file)
    job = [sys.executable, "scripts/evaluate.py", "data=files", f"data.train={train_file}"]
    job += [f"data.test={tmp_path / 'test.tsv'}", f"ckpt_path={checkpoint}", f"models=[{','.join(BEFORE)}]"]
    job += ["device=cpu", "num_threads=2", f"hydra.run.dir={tmp_path / 'out'}"]
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *job], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(result.stdout.split()[-1]) * 1024
    assert peak < 1.5 * GIB < 4 * GIB, f"peak {peak / GIB:.2f} GiB"
    assert (tmp_path / "out" / "metrics.json").is_file()
    results = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert results["lstm"]["test/n_predictions"] == 10152 + LONG_SESSION - 1
    for name, (recall, mrr) in BEFORE.items():
        assert results[name]["test/recall@20"] == pytest.approx(recall, abs=1e-12), name
        assert results[name]["test/mrr@20"] == pytest.approx(mrr, abs=1e-12), name
