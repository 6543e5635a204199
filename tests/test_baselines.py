"""Every baseline on tiny sessions whose scores are worked out by hand."""

import math

import numpy as np
import pytest
import torch

from lstm_rec.baselines import VSKNN, ItemKNN, Markov, Popularity, SequentialRules, SessionKNN, SessionPopularity
from lstm_rec.baselines import knn as knn_module
from lstm_rec.data.sessions import Sessions
from lstm_rec.evaluation import rank_batch

# Four training sessions over items 1..5, with the time of every click (session s3 is the most recent).
TRAIN = Sessions(
    items=np.array([1, 2, 3, 2, 3, 4, 1, 4, 5, 2]),
    offsets=np.array([0, 3, 6, 8, 10]),
    times=np.array([8.0, 9, 10, 18, 19, 20, 29, 30, 39, 40]),
)
N_ITEMS = 5


def scores(baseline, *prefixes):
    width = max(map(len, prefixes))
    padded = np.array([list(p) + [0] * (width - len(p)) for p in prefixes])
    return baseline.fit(TRAIN, N_ITEMS).score_prefixes(padded)


def test_popularity():
    np.testing.assert_allclose(scores(Popularity(), [4]), [[2, 3, 2, 2, 1]])


def test_session_popularity_puts_session_items_first():
    # in-session counts 1: 2, 3: 1, plus popularity / (max + 1) = counts / 4 to break ties
    np.testing.assert_allclose(scores(SessionPopularity(), [1, 3, 1]), [[2.5, 0.75, 1.5, 0.5, 0.25]])


def test_markov_counts_direct_successors():
    # 1 -> 2 (s0), 2 -> 3 (s0, s1), 3 -> 4 (s1), 1 -> 4 (s2), 5 -> 2 (s3)
    np.testing.assert_allclose(scores(Markov(), [5, 2], [1]), [[0, 0, 2, 0, 0], [0, 1, 0, 1, 0]])


def test_sequential_rules_weigh_by_distance():
    # row 1: 1 -> 2 at d1 (1), 1 -> 3 at d2 (1/4), 1 -> 4 at d1 (1); row 2: 2 -> 3 twice (2), 2 -> 4 at d2 (1/4)
    sr = SequentialRules(steps=2, weighting="quadratic", pruning=0)
    np.testing.assert_allclose(scores(sr, [1], [2]), [[0, 1, 0.25, 1, 0], [0, 0, 2, 0.25, 0]])
    # pruning to 1 keeps the strongest successor; the tie 2 vs 4 in row 1 goes to the smaller item
    pruned = SequentialRules(steps=2, weighting="quadratic", pruning=1)
    np.testing.assert_allclose(scores(pruned, [1], [2]), [[0, 1, 0, 0, 0], [0, 0, 2, 0, 0]])
    np.testing.assert_allclose(scores(SequentialRules(steps=1, weighting="div"), [1]), scores(Markov(), [1]))


def test_item_knn_cosine_of_session_cooccurrence():
    # with lmbd 0: sim(2, j) = cooc / sqrt(supp(2) supp(j)), supp = clicks (2: 3, 1: 2, 3: 2, 4: 2, 5: 1)
    expected = [1 / math.sqrt(6), 0, 2 / math.sqrt(6), 1 / math.sqrt(6), 1 / math.sqrt(3)]
    np.testing.assert_allclose(scores(ItemKNN(lmbd=0.0), [4, 2]), [expected])


def test_session_knn():
    # prefix {2, 3}: cosine with s0 {1,2,3} and s1 {2,3,4} is 2 / sqrt(2 * 3); with s3 {5,2} 1 / sqrt(2 * 2)
    high, low = 2 / math.sqrt(6), 0.5
    np.testing.assert_allclose(scores(SessionKNN(k=2), [2, 3]), [[high, 2 * high, 2 * high, high, 0]])
    np.testing.assert_allclose(
        scores(SessionKNN(k=3), [2, 3]), [[high, 2 * high + low, 2 * high, high, low]], rtol=1e-12
    )


def test_session_knn_samples_the_most_recent_sessions():
    # of the sessions sharing an item with {2, 3} (s0, s1, s3), s3 ended last
    np.testing.assert_allclose(scores(SessionKNN(k=3, sample_size=1), [2, 3]), [[0, 0.5, 0, 0, 0.5]])


def test_vsknn_position_weights_and_decay():
    # prefix [1, 5] (L = 2): weights (1/2)^2 = 0.25 for item 1 and 1 for item 5; 2 distinct items.
    # s0 and s2 share item 1: sim 0.25 / 2, and item 1 is 2 clicks back: vote 0.125 / 2.
    # s3 shares item 5, the last click: sim 1 / 2, vote 0.5.
    vsknn = VSKNN(k=10, idf_weighting=0.0)
    np.testing.assert_allclose(scores(vsknn, [1, 5]), [[0.125, 0.0625 + 0.5, 0.0625, 0.0625, 0.5]])
    # idf: each item's score times 1 + w ln(n_sessions / clicks)
    weighted = VSKNN(k=10, idf_weighting=1.0)
    factor = 1 + np.log(4 / np.array([2, 3, 2, 2, 1]))
    np.testing.assert_allclose(scores(weighted, [1, 5]), [[0.125, 0.5625, 0.0625, 0.0625, 0.5]] * factor)


def test_vsknn_repeated_item_keeps_its_last_position():
    # prefix [2, 4, 2]: item 2 at its last position 3 of 3 weighs 1, item 4 at 2 of 3 weighs 4/9.
    # s1 {2,3,4}: (1 + 4/9) / 2; s0 {1,2,3} and s3 {5,2}: 1 / 2; s2 {1,4}: (4/9) / 2, its item 4 is 2 clicks back.
    s1, s0, s2 = (1 + 4 / 9) / 2, 0.5, (4 / 9) / 2 / 2
    expected = [s0 + s2, s0 + s1 + s0, s0 + s1, s1 + s2, s0]
    np.testing.assert_allclose(scores(VSKNN(k=10, idf_weighting=0.0), [2, 4, 2]), [expected])


@pytest.mark.parametrize("dense", [True, False])
def test_vsknn_distance_decay_weighs_a_neighbours_items_by_their_distance_from_the_shared_one(dense, monkeypatch):
    # The votes summed in a dense block (many votes per score) or kept sparse (few): the same scores.
    monkeypatch.setattr(knn_module, "DENSE_VOTES", 10**9 if dense else 0)
    # prefix [1, 5] as above; with distance_decay 1 a neighbour's item d positions from the shared one gets e^-d of
    # its vote: s0 [1, 2, 3] and s2 [1, 4] share item 1 at position 1 (vote 0.0625), s3 [5, 2] item 5 (vote 0.5).
    decayed = VSKNN(k=10, idf_weighting=0.0, distance_decay=1.0)
    e = math.exp(-1)
    expected = [0.0625 + 0.0625, (0.0625 + 0.5) * e, 0.0625 * e**2, 0.0625 * e, 0.5]
    np.testing.assert_allclose(scores(decayed, [1, 5]), [expected], rtol=1e-12)
    # prefix [2, 4, 2] (votes of the test below): the shared item is the most recent one each neighbour holds, where
    # that neighbour holds it: 2 at position 1 of s1 [2, 3, 4], 2 of s0 [1, 2, 3] and s3 [5, 2]; s2 [1, 4] holds 4
    # only, at position 2. Distance decay 2: e^-(d / 2).
    s1, s0, s3, s2 = (1 + 4 / 9) / 2, 0.5, 0.5, (4 / 9) / 2 / 2
    h = math.exp(-0.5)
    expected = [(s0 + s2) * h, s1 + s0 + s3, (s1 + s0) * h, s1 * h**2 + s2, s3 * h]
    got = scores(VSKNN(k=10, idf_weighting=0.0, distance_decay=2.0), [2, 4, 2])
    np.testing.assert_allclose(got, [expected], rtol=1e-12)


def test_vsknn_distance_decay_measures_from_an_items_last_click_in_the_neighbour():
    # one training session [1, 2, 1, 3]: item 1's last click is at 3, one before the shared item 3 at 4
    sessions = Sessions(items=np.array([1, 2, 1, 3]), offsets=np.array([0, 4]), times=np.arange(4.0))
    knn = VSKNN(k=10, idf_weighting=0.0, distance_decay=1.0).fit(sessions, 3)
    vote = 1.0  # the only item of the prefix [3], its last click: similarity 1 / 1, 1 click back
    np.testing.assert_allclose(knn.score_prefixes(np.array([[3]])), [[vote * math.exp(-1), vote * math.exp(-2), vote]])


@pytest.mark.parametrize("decay", [None, 2.0])
def test_vsknn_divides_by_the_exact_distance_in_a_prefix_of_many_distinct_items(decay):
    # Training sessions A = [1..60] and B = [61..114]; the prefix clicks 1..114 in order. B's nearest shared item is
    # the last click (1 back), A's is item 60, 55 clicks back: weighting_score "div" divides A's votes by 55 and B's
    # by 1. One sum of 2^-distance over 114 distinct items rounds to 1 in float64 (distance 0: infinite votes).
    items = np.arange(1, 115)
    sessions = Sessions(items=items, offsets=np.array([0, 60, 114]), times=np.arange(114.0))
    prefix = items[None, :]
    div, same = (
        VSKNN(k=10, idf_weighting=0.0, weighting_score=score, distance_decay=decay)
        .fit(sessions, 114)
        .score_prefixes(prefix)
        for score in ("div", "same")
    )
    assert np.isfinite(div).all() and (same > 0).all()
    np.testing.assert_allclose(div[0, :60], same[0, :60] / 55, rtol=1e-12)
    np.testing.assert_allclose(div[0, 60:], same[0, 60:], rtol=1e-12)


@pytest.mark.parametrize(("score", "decay"), [("div", None), ("div", 2.0), ("same", 2.0)])
def test_vsknn_counts_an_unknown_click_as_a_position(score, decay):
    # A test catalog wider than the network's turns a click on an item the network does not know into a 0 within the
    # prefix: [0, 1, 5] is the prefix [1, 5] after one unknown click. Every shared item stands as many clicks back as in
    # [1, 5] (item 5 one back, item 1 two), so with equal position weights the votes are [1, 5]'s; counting only the
    # nonzero clicks put item 5 zero clicks back (infinite votes).
    knn = VSKNN(k=10, idf_weighting=0.0, weighting="same", weighting_score=score, distance_decay=decay).fit(TRAIN, 5)
    hole = knn.encode(torch.tensor([[0, 1, 5]]))[torch.tensor([0]), torch.tensor([2])].summary()
    assert hole.lengths.tolist() == [3]
    np.testing.assert_allclose(knn.score_summary(hole), knn.score_prefixes(np.array([[1, 5]])), rtol=1e-12)


def test_vsknn_takes_a_numpy_distance_decay():
    # the session of the test above: NumPy's numbers (e.g. from a sweep's grid) score as Python's
    sessions = Sessions(items=np.array([1, 2, 1, 3]), offsets=np.array([0, 4]), times=np.arange(4.0))
    expected = [[math.exp(-1), math.exp(-2), 1.0]]
    for decay in (1.0, np.int64(1), np.float32(1.0)):
        knn = VSKNN(k=10, idf_weighting=0.0, distance_decay=decay).fit(sessions, 3)
        np.testing.assert_allclose(knn.score_prefixes(np.array([[3]])), expected, rtol=1e-12)


@pytest.mark.parametrize("decay", [0.0, -1.0, float("nan"), "2", True])
def test_vsknn_rejects_a_distance_decay_not_above_zero(decay):
    with pytest.raises(ValueError, match="distance_decay must be > 0"):
        VSKNN(distance_decay=decay)


def test_vsknn_with_a_very_long_distance_decay_votes_as_vsknn():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=300)
    items = rng.integers(1, 41, size=lengths.sum())
    sessions = Sessions(items=items, offsets=np.r_[0, np.cumsum(lengths)], times=np.arange(float(len(items))))
    prefixes = np.zeros((50, 9), dtype=np.int64)
    for row, length in zip(prefixes, rng.integers(1, 10, size=50), strict=True):
        row[:length] = rng.integers(1, 41, size=length)
    for score in ("div", "same"):
        plain = VSKNN(k=20, sample_size=100, weighting_score=score).fit(sessions, 40).score_prefixes(prefixes)
        flat = VSKNN(k=20, sample_size=100, weighting_score=score, distance_decay=1e12).fit(sessions, 40)
        np.testing.assert_allclose(flat.score_prefixes(prefixes), plain, rtol=1e-9)


def test_baselines_see_every_prefix_of_a_batch():
    # the evaluation path hands a baseline each prefix: [1] -> 2, then [1, 2] -> 3
    markov = Markov().fit(TRAIN, N_ITEMS)
    ranked = rank_batch(markov, torch.tensor([[1, 2, 3]]), k_max=1)
    assert ranked.ranks.tolist() == [2.0, 1.0]  # after 1: items 2 and 4 tie at 1 (pessimistic: rank 2)
    assert ranked.top_items[:, 0].tolist()[1] == 2  # after 2: item 3 (column 2)


@pytest.mark.parametrize("bad", [{"weighting": "cubic"}, {"steps": 0}])
def test_sequential_rules_reject_bad_parameters(bad):
    with pytest.raises(ValueError):
        SequentialRules(**bad)
