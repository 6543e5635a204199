"""The kNN blend (lstm_rec.blend): V-SKNN's scaled scores added to the network's, on hand-computed values, its weight
chosen on the validation sessions, and through training, the checkpoint, serving and export."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import file_overrides

from conftest import compose_config
from lstm_rec.baselines.prefixes import Prefixes
from lstm_rec.blend import (
    KNN_SETTINGS,
    BestScores,
    BlendScorer,
    KNNBlend,
    KNNBlendSearch,
    RepeatBonus,
    add_terms,
    candidate_ranks,
    joined,
)
from lstm_rec.checkpoint import CHECKPOINT_KEY, CheckpointError, load_network, read_checkpoint
from lstm_rec.data import FileDataModule, Sessions
from lstm_rec.data.sessions import NoClickTimesError
from lstm_rec.data.synthetic import generate_events
from lstm_rec.evaluation import Ranking, evaluate
from lstm_rec.jobs.train import train
from lstm_rec.metrics import target_ranks
from lstm_rec.serving.export import export
from lstm_rec.serving.recommender import Recommender

# No idf and no distance decay: each neighbour votes 1 (its similarity) for each of its items.
PLAIN = {"idf_weighting": 0.0, "distance_decay": None}


class FixedScores(torch.nn.Module):
    """Scores every item the same way after every prefix: `scores` (n_items,)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.base = torch.tensor(scores)
        self.n_items = len(scores)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        return items

    def score(self, states: torch.Tensor) -> torch.Tensor:
        return self.base.expand(len(states), -1)


def sessions_of(*sessions: list[int]) -> Sessions:
    """Sessions one second apart, in the order given."""
    items = np.concatenate([np.asarray(s) for s in sessions])
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])])
    return Sessions(items, offsets, np.arange(len(items), dtype=np.float64))


def test_blend_terms_are_the_log_of_v_sknn_votes_over_the_prefix_best():
    # Prefix [1]: both training sessions share item 1 at its last (only) click: similarity 1 each, each votes 1 for
    # its items. Item 1 gets 2 votes, items 2 and 3 one each: over the best, 1, 0.5, 0.5, and log(1 + 100 x).
    # [1, 4] (item 4 in no training session) has the same two neighbours, alike: the same terms.
    train = sessions_of([1, 2], [1, 3])
    prefixes = Prefixes.of(torch.tensor([[1, 4]]))
    plain = KNNBlend(train, 4, 1.0, PLAIN).scaled(prefixes)
    row = [math.log(101), math.log(51), math.log(51), 0.0]
    torch.testing.assert_close(plain, torch.tensor([[row, row]]))
    # With idf (5 ln(2 sessions / clicks)): item 1's factor is 1 (it is in both sessions), items 2 and 3 get
    # 1 + 5 ln 2 each, so they lead and item 1's share is 2 / (1 + 5 ln 2).
    idf = KNNBlend(train, 4, 1.0, {"distance_decay": None}, scale=3.0).scaled(prefixes[:, :1])
    share = 2 / (1 + 5 * math.log(2))
    torch.testing.assert_close(idf, torch.tensor([[[math.log(1 + 3 * share), math.log(4), math.log(4), 0.0]]]))
    # No training session shares item 4: no neighbour votes, and the blend adds nothing; nor to padding alone (a batch
    # of empty sessions, as the Recommender pads its blocks).
    none = KNNBlend(train, 4, 1.0).scaled(Prefixes.of(torch.tensor([[4]])))
    torch.testing.assert_close(none, torch.zeros(1, 1, 4))
    padding = KNNBlend(train, 4, 1.0).scaled(Prefixes.of(torch.zeros(3, 2, dtype=torch.long)))
    torch.testing.assert_close(padding, torch.zeros(3, 2, 4))


def test_the_blends_knn_counts_every_shared_prefix_item_alike_unless_told_otherwise():
    # Prefix [1, 2]; session A = [1, 5] shares item 1 (2 clicks back), B = [2, 6] shares item 2 (the last click).
    # Counting shared items alike (the blend's default), each is 1 of the prefix's 2 items: similarity 1/2 each;
    # votes decay by the steps back of the latest shared item: A 1/2 x 1/2 = 1/4, B 1/2. Over the best (B's 1/2):
    # items 1 and 5 0.5, items 2 and 6 1. Quadratic (V-SKNN's own): A's item weighs (1/2)^2, so A's similarity is
    # 1/8 and its vote 1/16, and items 1 and 5 get 0.125. A checkpoint keeps the settings its blend was made with.
    train = sessions_of([1, 5], [2, 6])
    prefixes = Prefixes.of(torch.tensor([[1, 2]]))
    alike = KNNBlend(train, 6, 1.0, PLAIN)
    quadratic = KNNBlend(train, 6, 1.0, PLAIN | {"weighting": "quadratic"})

    def terms(ratio_a: float) -> torch.Tensor:
        a, b = math.log(1 + 100 * ratio_a), math.log(101)
        return torch.tensor([a, b, 0.0, 0.0, a, b])

    torch.testing.assert_close(alike.scaled(prefixes)[0, 1], terms(0.5))
    torch.testing.assert_close(quadratic.scaled(prefixes)[0, 1], terms(0.125))
    assert alike.settings["weighting"] == "same"
    restored = KNNBlend.from_checkpoint(quadratic.to_checkpoint(), 6)
    assert restored.settings["weighting"] == "quadratic"
    torch.testing.assert_close(restored.scaled(prefixes), quadratic.scaled(prefixes))


def test_the_blends_knn_weighs_a_neighbours_items_by_their_distance_from_the_shared_one():
    # Prefix [1]. A = [1, 2, 3] holds item 1 at position 1, B = [4, 1] at 2; similarity 1 each, the shared item is
    # the last click. With the blend's distance decay of 2 clicks an item d positions from item 1 in its session
    # gets e^(-d / 2) of the vote: item 1 1 + 1, item 2 e^-0.5, item 3 e^-1, item 4 e^-0.5; over the best (2).
    train = sessions_of([1, 2, 3], [4, 1])
    prefixes = Prefixes.of(torch.tensor([[1]]))
    no_idf = {"idf_weighting": 0.0}
    assert KNN_SETTINGS["distance_decay"] == 2.0
    decayed = KNNBlend(train, 4, 1.0, no_idf)
    ratios = [1.0, math.exp(-0.5) / 2, math.exp(-1) / 2, math.exp(-0.5) / 2]
    expected = torch.tensor([[[math.log(1 + 100 * r) for r in ratios]]])
    torch.testing.assert_close(decayed.scaled(prefixes), expected)
    # A blend saved before distance_decay existed has no such setting, and counted every item of a neighbour alike:
    # so it is restored (ratios 1, 1/2, 1/2, 1/2).
    entry = decayed.to_checkpoint()
    assert entry["settings"]["distance_decay"] == 2.0
    del entry["settings"]["distance_decay"]
    restored = KNNBlend.from_checkpoint(entry, 4)
    assert restored.settings["distance_decay"] is None
    old = torch.tensor([[[math.log(101), math.log(51), math.log(51), math.log(51)]]])
    torch.testing.assert_close(restored.scaled(prefixes), old)


def test_the_blend_adds_the_weighted_terms_to_the_network():
    # After [1]: votes 3, 2, 1 for items 1, 2, 3 (no idf), shares 1, 2/3, 1/3; scale 3: log 4, log 3, log 2.
    train = sessions_of([1, 2], [1, 2], [1, 3])
    scorer = BlendScorer(FixedScores([0.0, 0.5, 0.6]), KNNBlend(train, 3, 0.5, PLAIN, scale=3.0))
    scores = scorer.score(scorer.encode(torch.tensor([[1]]))[:, 0])
    expected = [0.5 * math.log(4), 0.5 + 0.5 * math.log(3), 0.6 + 0.5 * math.log(2)]
    torch.testing.assert_close(scores, torch.tensor([expected]))


# One validation session [1, 2]: after item 1 the next click is item 2 (score column 1).
VALIDATION = [torch.tensor([[1, 2]])]


def test_the_search_keeps_the_weight_that_ranks_the_validation_sessions_best():
    # The network scores items 1-3 as 0, 0.5, 0.6: item 2 ranks 2nd. The blend's terms after [1] are log 4, log 3,
    # log 2 (scale 3, as above). Weight 0.2: 0.277, 0.720, 0.739 (item 2 second); 0.5: 0.693, 1.049, 0.947 (first);
    # 1: 1.386, 1.599, 1.293 (first); 2: 2.773, 2.697, 1.986 (second). 0.5 and 1 tie at MRR 1; the smaller wins.
    train = sessions_of([1, 2], [1, 2], [1, 3])
    search = KNNBlendSearch(weights=[0.2, 0.5, 1.0, 2.0], scale=3.0, knn=PLAIN)
    weight, knn, table = search.choose(FixedScores([0.0, 0.5, 0.6]), train, 3, VALIDATION, "val/mrr@2", Ranking([1, 2]))
    assert weight == 0.5 and knn == PLAIN
    assert [row["weight"] for row in table] == [0.0, 0.2, 0.5, 1.0, 2.0]
    assert [row["val/mrr@2"] for row in table] == [0.5, 0.5, 1.0, 1.0, 0.5]
    assert [row["val/recall@1"] for row in table] == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_the_search_keeps_no_blend_when_none_ranks_better():
    train = sessions_of([1, 2], [1, 2], [1, 3])
    weight, knn, table = KNNBlendSearch([0.5, 1.0], 3.0, PLAIN).choose(
        FixedScores([0.0, 2.0, 0.6]), train, 3, VALIDATION, "val/mrr@2", Ranking([1, 2])
    )
    assert weight == 0.0 and knn == PLAIN and [row["val/mrr@2"] for row in table] == [1.0, 1.0, 1.0]


def test_the_search_keeps_the_knn_variant_that_ranks_best_with_its_weight():
    # Validation session [1, 2, 3]. Training sessions [1, 3] twice and [2, 4]; no idf, every shared item alike.
    # After [1]: the next click, item 2, gets no vote (no neighbour holds it) and the network scores it -10: rank 4 of 4
    # at every candidate, reciprocal rank 0 at cutoff 2.
    # After [1, 2]: each neighbour shares 1 of the 2 prefix items, similarity 1/2. Item 3's two voters share item 1,
    # two clicks back; item 4's one voter shares item 2, one click back. Votes decayed by 1/clicks back (div, the
    # default): item 3 1/4 + 1/4 = 1/2, item 4 1/2: both at the best, log(1 + 3) each, and the network's order (item 4
    # 0.6 over item 3 0.5) stands: rank 2. Not decayed (weighting_score same): item 3 1, item 4 1/2: log 4 against
    # log 2.5, so item 3 leads from weight 0.1 / log(1.6) = 0.213 on: first at 0.5, second at 0.1.
    train = sessions_of([1, 3], [1, 3], [2, 4])
    search = KNNBlendSearch([0.1, 0.5], 3.0, PLAIN, knn_variants=[{}, {"weighting_score": "same"}])
    weight, knn, table = search.choose(
        FixedScores([-10.0, -10.0, 0.5, 0.6]), train, 4, [torch.tensor([[1, 2, 3]])], "val/mrr@2", Ranking([2])
    )
    assert weight == 0.5 and knn == PLAIN | {"weighting_score": "same"}
    assert [(row["weight"], row["knn"].get("weighting_score")) for row in table] == [
        (0.0, None), (0.1, None), (0.5, None), (0.1, "same"), (0.5, "same")
    ]  # fmt: skip
    assert [row["val/mrr@2"] for row in table] == [0.25, 0.25, 0.25, 0.25, 0.5]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("all", [1.0, 1.0, 1.0, 0.0]),
        ("recent", [math.exp(-1), 1.0, math.exp(-0.5), 0.0]),
        ("last", [0, 1, 0, 0]),
        ("spread", [1 / 3, 1 / 3, 1 / 3, 0.0]),
    ],
)
def test_the_repeat_bonus_lifts_the_sessions_items_by_how_far_back_their_latest_click_lies(shape, expected):
    # After [3, 1, 3, 2]: item 2 clicked last (0 clicks after it), item 3 one click before the end, item 1 two; item 4
    # never. The bonus alone (kNN weight 0) on a network that scores every item 0.25, at weight 2.
    train = sessions_of([1, 2], [3, 4])
    blend = KNNBlend(train, 4, 0.0, PLAIN, repeat=RepeatBonus(shape, 2.0))
    scorer = BlendScorer(FixedScores([0.25] * 4), blend)
    scores = scorer.score(scorer.encode(torch.tensor([[3, 1, 3, 2]]))[:, -1])
    torch.testing.assert_close(scores, 0.25 + 2.0 * torch.tensor([expected]))
    # With the kNN at a weight, both are added: the kNN's terms as before, the bonus on top.
    with_knn = KNNBlend(train, 4, 0.5, PLAIN, repeat=RepeatBonus(shape, 2.0))
    knn_only = KNNBlend(train, 4, 0.5, PLAIN)
    prefixes = Prefixes.of(torch.tensor([[3, 1, 3, 2]]))[:, -1:]
    torch.testing.assert_close(
        with_knn.add_to(torch.zeros(1, 1, 4), prefixes),
        knn_only.add_to(torch.zeros(1, 1, 4), prefixes) + 2.0 * torch.tensor([[expected]]),
    )


def test_the_spread_bonus_shares_one_weight_among_the_items_each_prefix_holds():
    # Session [3, 1, 3, 2] at weight 3: after [3] item 3 gets all of it; after [3, 1] and [3, 1, 3] items 3 and 1 half
    # each; after [3, 1, 3, 2] items 3, 1 and 2 a third each. A second session [4] in the batch: item 4 alone, 3.
    blend = KNNBlend(sessions_of([1, 2], [3, 4]), 4, 0.0, PLAIN, repeat=RepeatBonus("spread", 3.0))
    scores = blend.add_to(torch.zeros(2, 4, 4), Prefixes.of(torch.tensor([[3, 1, 3, 2], [4, 0, 0, 0]])))
    expected = [[0.0, 0.0, 3.0, 0.0], [1.5, 0.0, 1.5, 0.0], [1.5, 0.0, 1.5, 0.0], [1.0, 1.0, 1.0, 0.0]]
    torch.testing.assert_close(scores[0], torch.tensor(expected))
    torch.testing.assert_close(scores[1, 0], torch.tensor([0.0, 0.0, 0.0, 3.0]))


def test_a_repeat_bonus_needs_a_known_shape_and_a_nonzero_weight_and_a_knn_weight_needs_it_or_more_than_0():
    with pytest.raises(ValueError, match="shape must be one of"):
        RepeatBonus("first", 1.0)
    for weight in (0.0, math.inf, -math.inf, math.nan, True):
        with pytest.raises(ValueError, match="weight must be"):
            RepeatBonus("all", weight)
    assert RepeatBonus("all", -1).weight == -1.0  # below 0 lowers the clicked items
    with pytest.raises(ValueError, match=r"weight must be > 0 \(or 0 with a repeat bonus\)"):
        KNNBlend(sessions_of([1, 2]), 2, 0.0, PLAIN)
    with pytest.raises(ValueError, match="repeat_shapes"):
        KNNBlendSearch(repeat_weights=[1.0], repeat_shapes=["first"])
    for weights in ([0.0], [1.0, math.nan], [-math.inf]):
        with pytest.raises(ValueError, match="repeat_weights must be finite nonzero weights"):
            KNNBlendSearch(repeat_weights=weights)


def test_the_search_keeps_the_repeat_bonus_that_ranks_the_validation_sessions_best():
    # The network scores items 1-3 as 0, 0, 1. Validation session [1, 2, 1]: after [1] the next click is item 2, after
    # [1, 2] item 1 again. Cutoff 3, pessimistic ties. No bonus: both targets rank 3rd (a tie at 0, and item 3): MRR
    # 1/3.
    # all at 2: after [1] item 1 scores 2, item 2 still 3rd; after [1, 2] items 1 and 2 score 2 (a tie) over item 3's
    # 1: 2nd. MRR (1/3 + 1/2) / 2. recent at 2: after [1, 2] item 1 scores 2 exp(-1/2) = 1.21, item 2 2: 2nd again.
    # last at 2 lifts item 2 after [1, 2]: no gain. spread at 2 gives items 1 and 2 one each after [1, 2], a tie with
    # item 3: 3rd. At 0.5 no shape lifts item 1 above item 3: 1/3. all at 2 comes first among the best.
    search = KNNBlendSearch([0.5], 3.0, PLAIN, repeat_weights=[0.5, 2.0])
    bonus, table = search.choose_repeat(
        FixedScores([0.0, 0.0, 1.0]), None, 3, [torch.tensor([[1, 2, 1]])], "val/mrr@3", Ranking([3])
    )
    assert bonus == RepeatBonus("all", 2.0)
    assert [row["repeat"] for row in table] == [None] + [
        {"shape": shape, "weight": w} for shape in ("all", "recent", "last", "spread") for w in (0.5, 2.0)
    ]
    assert [row["val/mrr@3"] for row in table] == pytest.approx(
        [1 / 3, 1 / 3, 5 / 12, 1 / 3, 5 / 12, 1 / 3, 1 / 3, 1 / 3, 1 / 3]
    )
    # Where the session's next click is never an earlier one, a bonus only pulls its items up: none is kept.
    bonus, table = search.choose_repeat(FixedScores([0.0, 1.0, 0.5]), None, 3, VALIDATION, "val/mrr@3", Ranking([3]))
    assert bonus is None and table[0]["val/mrr@3"] == 1.0
    # Without repeat weights there is nothing to choose.
    assert KNNBlendSearch([0.5]).choose_repeat(
        FixedScores([0.0, 1.0, 0.5]), None, 3, VALIDATION, "val/mrr@3", Ranking([3])
    ) == (
        None,
        [],
    )


def test_a_negative_repeat_bonus_lowers_the_sessions_items_and_is_kept_where_sessions_never_return():
    # The network scores items 1-4 as 1, 0.9, 0.5, 0 and favours what the session already clicked. Validation
    # sessions [1, 3] and [2, 3]: each next click is a new item, item 3. Cutoff 4, pessimistic ties.
    # No bonus: after [1], item 3 ranks 3rd behind items 1 (1) and 2 (0.9); after [2] likewise: MRR 1/3.
    # all at -1: after [1] item 1 drops to 0, below item 3 (0.5): item 3 ranks 2nd; after [2] item 2 drops to -0.1: 2nd
    # again. MRR 1/2. The same for recent, last and spread (the only clicked item is the latest, and the only one). At
    # 1 the clicked items only rise: 1/3. The first of the best, all at -1, is kept.
    search = KNNBlendSearch([0.5], 3.0, PLAIN, repeat_weights=[-1.0, 1.0])
    validation = [torch.tensor([[1, 3], [2, 3]])]
    bonus, table = search.choose_repeat(
        FixedScores([1.0, 0.9, 0.5, 0.0]), None, 4, validation, "val/mrr@4", Ranking([4])
    )
    assert bonus == RepeatBonus("all", -1.0)
    assert [row["val/mrr@4"] for row in table] == pytest.approx([1 / 3] + [1 / 2, 1 / 3] * 4)
    # The lowered scores, item by item, after [3, 1, 3, 2] at -2 with every clicked item lowered: items 1-3 by 2.
    blend = KNNBlend(sessions_of([1, 2], [3, 4]), 4, 0.0, PLAIN, repeat=RepeatBonus("all", -2.0))
    scorer = BlendScorer(FixedScores([0.25] * 4), blend)
    scores = scorer.score(scorer.encode(torch.tensor([[3, 1, 3, 2]]))[:, -1])
    torch.testing.assert_close(scores, torch.tensor([[-1.75, -1.75, -1.75, 0.25]]))


def test_blend_auto_chooses_the_knn_again_on_top_of_the_repeat_bonus_it_chose():
    # The network scores items 1-5 as 1, 0.45, 0.4, 0.5, 2. Training sessions [3, 4], [3, 4], [3, 5]; no idf, no
    # distance decay. Validation sessions A = [1, 2] and B = [3, 4]; MRR over all 5 ranks.
    # A: after [1] (no training session holds item 1: no neighbour) the target, item 2, ranks 4th behind items 5, 1
    # and 4 at every kNN weight; 3rd when a bonus of -5 sinks item 1.
    # B: after [3] every training session is a neighbour (similarity 1, the shared item the last click): votes item 3
    # 3, item 4 2, item 5 1; over the best, log(1 + 3 x): item 3 1.386, item 4 1.099, item 5 0.693, times the weight.
    # Without the bonus the target, item 4, ranks 3rd at every weight: at 0 behind items 5 (2) and 1 (1); at 0.5
    # behind 5 (2.347) and 3 (1.093) with 1.049; at 2 behind 5 (3.386) and 3 (3.172) with 2.697.
    # Step 1, the kNN alone: (1/4 + 1/3) / 2 at every weight: none kept.
    # Step 2, the bonus on top of no kNN: at -5 (every shape alike after a one-click prefix) A ranks 3rd and B 3rd
    # (behind 5 and 1): 1/3 against 7/24: every clicked item at -5 kept.
    # Step 3, the kNN again with the bonus: item 3 sinks, so at 0.5 item 4 (1.049) passes item 1 (1): B ranks 2nd;
    # at 2 too (2.697 against 5's 3.386). (1/3 + 1/2) / 2 at both: 0.5 kept.
    train = sessions_of([3, 4], [3, 4], [3, 5])
    search = KNNBlendSearch([0.5, 2.0], 3.0, PLAIN, repeat_weights=[-5.0])
    validation = [torch.tensor([[1, 2], [3, 4]])]
    scores = FixedScores([1.0, 0.45, 0.4, 0.5, 2.0])
    chosen = search.choose_all(scores, train, 5, validation, "val/mrr@5", Ranking([5]))
    assert chosen.first == (0.0, PLAIN)
    assert [row["val/mrr@5"] for row in chosen.knn_table] == pytest.approx([7 / 24] * 3)
    assert [row["val/mrr@5"] for row in chosen.repeat_table] == pytest.approx([7 / 24, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert chosen.repeat == RepeatBonus("all", -5.0)
    assert [row["val/mrr@5"] for row in chosen.knn_table_with_repeat] == pytest.approx([1 / 3, 5 / 12, 5 / 12])
    assert (chosen.weight, chosen.knn) == (0.5, PLAIN)
    # Ranked at most max_scores=5 scores (one prefix) at a time: the same tables and choices, prefix by prefix.
    rows, whole = [], scores.score
    scores.score = lambda states: rows.append(len(states)) or whole(states)
    chunked = search.choose_all(scores, train, 5, validation, "val/mrr@5", Ranking([5], max_scores=5))
    assert rows and max(rows) == 1 and chunked == chosen
    # After a bonus that lifts the clicked items the first choice stands: [1, 2, 1] (above) chooses every clicked item
    # at 2, and there is no third step.
    lifting = KNNBlendSearch([0.5], 3.0, PLAIN, repeat_weights=[0.5, 2.0]).choose_all(
        FixedScores([0.0, 0.0, 1.0]),
        sessions_of([1, 3], [2, 3]),
        3,
        [torch.tensor([[1, 2, 1]])],
        "val/mrr@3",
        Ranking([3]),
    )
    assert lifting.repeat == RepeatBonus("all", 2.0) and lifting.knn_table_with_repeat == []
    assert (lifting.weight, lifting.knn) == lifting.first
    # Without a bonus chosen there is no third step; without repeat weights, no second.
    no_bonus = KNNBlendSearch([0.5, 2.0], 3.0, PLAIN, repeat_weights=[5.0]).choose_all(
        scores, train, 5, validation, "val/mrr@5", Ranking([5])
    )
    assert no_bonus.repeat is None and no_bonus.knn_table_with_repeat == [] and no_bonus.weight == 0.0
    plain = KNNBlendSearch([0.5], 3.0, PLAIN).choose_all(scores, train, 5, validation, "val/mrr@5", Ranking([5]))
    assert plain.repeat_table == [] and plain.knn_table_with_repeat == []


def test_sparse_knn_scores_equal_the_dense_ones():
    events = generate_events(n_sessions=300, n_items=60, seed=3)
    train = sessions_of(*[group.to_numpy() for _, group in events.groupby(events.columns[0])[events.columns[1]]])
    knn = KNNBlend(train, 60, 1.0).knn
    summary = Prefixes.of(torch.tensor([[1, 5, 9, 5, 0], [7, 3, 0, 0, 0]])).summary()
    np.testing.assert_array_equal(knn.sparse_scores(summary).toarray(), knn.score_summary(summary))


@pytest.mark.parametrize(
    ("weights", "scale", "knn", "variants"),
    [
        ([], 100, {}, None),
        ([1.0, 0.0], 100, {}, None),
        ([1.0], 0, {}, None),
        ([1.0], 100, {"neighbours": 5}, None),
        ([1.0], 100, {}, [{}, {"decay": "same"}]),
    ],
)
def test_the_search_refuses_empty_or_non_positive_weights_and_unknown_settings(weights, scale, knn, variants):
    with pytest.raises(ValueError, match="blend"):
        KNNBlendSearch(weights, scale, knn, variants)


def test_the_blend_needs_click_times():
    with pytest.raises(NoClickTimesError, match="~blend"):
        KNNBlend(Sessions(np.array([1, 2]), np.array([0, 2])), 2, 1.0)


def test_joined_sessions_follow_each_other():
    first, second = sessions_of([1, 2], [3, 1, 2]), sessions_of([2, 3])
    both = joined([first, second])
    assert both.items.tolist() == [1, 2, 3, 1, 2, 2, 3]
    assert both.offsets.tolist() == [0, 2, 5, 7]
    assert both.times.tolist() == [0, 1, 2, 3, 4, 0, 1]


@pytest.fixture(scope="module")
def timed_files(tmp_path_factory):
    data = tmp_path_factory.mktemp("blend")
    events = generate_events(n_sessions=2500, n_items=150, seed=7)
    events.columns = ["SessionId", "ItemId", "Time"]
    cut = int(events["SessionId"].quantile(0.9))
    events[events["SessionId"] <= cut].to_csv(data / "train.tsv", sep="\t", index=False)
    events[events["SessionId"] > cut].to_csv(data / "test.csv", index=False)
    return data


@pytest.fixture(scope="module")
def blended_runs(timed_files, tmp_path_factory):
    """blend=auto with a refit and with a top-up, on the synthetic log (whose sessions share items: the kNN helps)."""
    runs = {}
    for refit in ("true", "top_up"):
        overrides = file_overrides(timed_files, "trainer.max_epochs=2", "~prior", "blend=auto", f"refit={refit}")
        runs[refit] = train(compose_config("train", overrides, tmp_path_factory.mktemp(f"blend_{refit}")))
    return runs


@pytest.mark.parametrize("refit", ["true", "top_up"])
def test_the_chosen_blend_is_tested_and_stored_and_made_from_all_the_training_data(timed_files, blended_runs, refit):
    metrics = blended_runs[refit]
    assert metrics["blend_weight"] in (0.05, 0.1, 0.2, 0.3)  # a weight was chosen: the kNN helps on this log
    train_events = pd.read_csv(timed_files / "train.tsv", sep="\t")
    selected, final = load_network(metrics["selected_checkpoint"]), load_network(metrics["checkpoint"])
    # The selected network's kNN holds the training part (validation split off); the final one all of data.train.
    n_sessions = train_events["SessionId"].nunique()
    assert 0.85 * n_sessions < selected.blend.sessions.n_sessions < n_sessions
    assert final.blend.sessions.n_sessions == n_sessions
    assert final.blend.sessions.n_events == len(train_events)
    assert final.blend.weight == metrics["blend_weight"] and final.blend.settings["k"] == 500
    # The kNN variant chosen (blend=auto's knn_variants) is the one stored, in the selected and the final network.
    assert metrics["blend_knn"] in ({}, {"weighting_score": "same"})
    assert final.blend.settings == selected.blend.settings == KNN_SETTINGS | metrics["blend_knn"]
    # Its items, in the model's index, are data.train's clicks.
    ids = final.item_index.ids[final.blend.sessions.items - 1]
    assert sorted(ids.tolist()) == sorted(train_events["ItemId"].tolist())
    datamodule = FileDataModule(test=str(timed_files / "test.csv"))
    datamodule.item_index = final.item_index
    datamodule.setup("test")
    test = datamodule.full_dataloader("test")
    blended = evaluate(final.scorer(), test, [20], "test/")["test/mrr@20"]
    assert blended == pytest.approx(metrics["test/mrr@20"])
    assert evaluate(final.network, test, [20], "test/")["test/mrr@20"] < blended


def test_a_fixed_blend_weight_is_taken_as_given(timed_files, tmp_path):
    overrides = file_overrides(timed_files, "trainer.max_epochs=1", "~prior", "blend=vsknn", "blend.weight=0.7")
    metrics = train(compose_config("train", overrides, tmp_path))
    blend = load_network(metrics["checkpoint"]).blend
    assert metrics["blend_weight"] == 0.7 and (blend.weight, blend.scale) == (0.7, 100.0)


def test_the_recommender_serves_the_blend(blended_runs):
    model = load_network(blended_runs["true"]["checkpoint"])
    recommender = Recommender.from_checkpoint(blended_runs["true"]["checkpoint"])
    session = list(model.item_index.ids[[3, 7, 3, 20]])
    answer = recommender.recommend(session, k=10)
    indices = torch.tensor([model.item_index.lookup(np.asarray(session)).tolist()])
    scorer = model.scorer()
    expected = scorer.score(scorer.encode(indices)[:, -1])[0]
    assert [item for item, _ in answer] == model.item_index.ids[expected.topk(10).indices.numpy()].tolist()
    assert (
        expected.topk(10).indices.tolist()
        != model.network.score(model.network.encode(indices)[:, -1])[0].topk(10).indices.tolist()
    )  # the blend changes the answer
    state = recommender.start()
    for item in session:
        state, stepped = recommender.step(state, item, k=10)
    assert [item for item, _ in stepped] == [item for item, _ in answer]
    assert [s for _, s in stepped] == pytest.approx([s for _, s in answer], abs=1e-5)
    per_position = recommender.recommend_positions(session, k=10)
    assert [item for item, _ in per_position[-1]] == [item for item, _ in answer]
    # Scored beside other sessions (one padded batch, an empty one among them), each answer is the one scored alone.
    others = [session, list(model.item_index.ids[[5, 9]]), [], session[:2]]
    together = recommender.recommend_batch(others, k=10)
    assert together == [recommender.recommend(items, k=10) for items in others]


def test_a_checkpoint_with_a_broken_blend_is_refused(blended_runs, tmp_path):
    checkpoint = read_checkpoint(blended_runs["true"]["checkpoint"])
    checkpoint[CHECKPOINT_KEY]["blend"]["offsets"] = checkpoint[CHECKPOINT_KEY]["blend"]["offsets"][:-1]
    path = tmp_path / "broken.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="kNN blend's offsets"):
        load_network(path)


def test_export_refuses_a_blend_unless_told_to_leave_it_out(blended_runs, tmp_path):
    checkpoint = blended_runs["true"]["checkpoint"]
    with pytest.raises(ValueError, match="without_blend=true"):
        export(checkpoint, "torchscript", tmp_path / "step.pt")
    path = export(checkpoint, "torchscript", tmp_path / "step.pt", without_blend=True)
    step, model = torch.jit.load(str(path)), load_network(checkpoint)
    carry = model.network.initial_carry(1)
    scores = step(torch.tensor([5]), carry.h, carry.c)[0]
    expected = model.network.score(model.network.encode(torch.tensor([[5]]))[:, 0])  # the network alone: no prior
    torch.testing.assert_close(scores, expected)


@pytest.fixture(scope="module")
def repeat_runs(timed_files, tmp_path_factory):
    """blend=auto with the repeat bonus's candidates, and a fixed kNN blend with a fixed bonus, both refitted."""
    runs = {}
    for name, blend in (
        ("auto", ["blend.repeat_weights=[0.5,2.0]"]),
        ("fixed", ["blend=vsknn", "blend.weight=0.3", "blend.repeat={shape:recent,weight:0.5}"]),
    ):
        overrides = file_overrides(timed_files, "trainer.max_epochs=2", "~prior", "refit=true", *blend)
        runs[name] = train(compose_config("train", overrides, tmp_path_factory.mktemp(f"blend_repeat_{name}")))
    return runs


def test_blend_auto_stores_the_repeat_bonus_it_chose(repeat_runs):
    # On the synthetic log the trained network ranks its sessions' repeats well; whatever the validation sessions chose
    # (the candidates' ranking is tested on hand-computed values above) is what the selected and the final network keep.
    metrics = repeat_runs["auto"]
    chosen = None if metrics["blend_repeat"] is None else RepeatBonus(**metrics["blend_repeat"])
    assert load_network(metrics["checkpoint"]).blend.repeat == chosen
    assert load_network(metrics["selected_checkpoint"]).blend.repeat == chosen


def test_a_repeat_bonus_is_tested_stored_and_served(timed_files, repeat_runs):
    metrics = repeat_runs["fixed"]
    assert metrics["blend_repeat"] == {"shape": "recent", "weight": 0.5}
    final = load_network(metrics["checkpoint"])
    assert final.blend.repeat == RepeatBonus("recent", 0.5) and final.blend.weight == 0.3
    datamodule = FileDataModule(test=str(timed_files / "test.csv"))
    datamodule.item_index = final.item_index
    datamodule.setup("test")
    test = datamodule.full_dataloader("test")
    assert evaluate(final.scorer(), test, [20], "test/")["test/mrr@20"] == pytest.approx(metrics["test/mrr@20"])
    # The recommender scores with it: the session's items get their bonus, so the answer differs from the kNN blend's.
    recommender = Recommender.from_checkpoint(metrics["checkpoint"])
    session = list(final.item_index.ids[[3, 7, 3, 20]])
    indices = torch.tensor([final.item_index.lookup(np.asarray(session)).tolist()])
    scorer = final.scorer()
    scores = scorer.score(scorer.encode(indices)[:, -1])[0]
    answer = recommender.recommend(session, k=10)
    assert [item for item, _ in answer] == final.item_index.ids[scores.topk(10).indices.numpy()].tolist()
    final.blend.repeat = None
    without = scorer.score(scorer.encode(indices)[:, -1])[0]
    lifted = (scores - without)[indices[0] - 1]  # items 3, 7, 3, 20: 1, 2 and 0 clicks after their latest click
    torch.testing.assert_close(lifted, 0.5 * torch.exp(-torch.tensor([1.0, 2.0, 1.0, 0.0]) / 2))


def test_a_checkpoint_with_a_broken_repeat_bonus_is_refused(repeat_runs, tmp_path):
    for broken in ({"shape": "first", "weight": 1.0}, {"shape": "all", "weight": 0.0}, "all", {"shape": ["all"]}):
        checkpoint = read_checkpoint(repeat_runs["fixed"]["checkpoint"])
        checkpoint[CHECKPOINT_KEY]["blend"]["repeat"] = broken
        path = tmp_path / "broken.ckpt"
        torch.save(checkpoint, path)
        with pytest.raises(CheckpointError, match="repeat bonus must be null or a shape"):
            load_network(path)


def test_a_fixed_repeat_bonus_alone_is_taken_as_given(timed_files, tmp_path):
    bonus = "blend.repeat={shape:last,weight:1.5}"
    overrides = file_overrides(timed_files, "trainer.max_epochs=1", "~prior", "blend=vsknn", "blend.weight=0", bonus)
    metrics = train(compose_config("train", overrides, tmp_path))
    blend = load_network(metrics["checkpoint"]).blend
    assert metrics["blend_repeat"] == {"shape": "last", "weight": 1.5}
    assert (blend.weight, blend.repeat) == (0.0, RepeatBonus("last", 1.5))


def sparse_terms(n_rows: int, n_items: int, per_row: int, generator: torch.Generator) -> tuple:
    """Terms as the blend's and the repeat bonus's are: distinct columns within a row, values >= 0."""
    columns = torch.stack([torch.randperm(n_items, generator=generator)[:per_row] for _ in range(n_rows)])
    rows = torch.arange(n_rows).repeat_interleave(per_row)
    values = torch.randint(0, 4, (n_rows * per_row,), generator=generator).float() / 2  # 0, 0.5, 1, 1.5: ties
    return rows, columns.reshape(-1), values


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0, -1.0])
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "mean"])
def test_candidate_ranks_are_the_ranks_of_the_candidates_full_scores_up_to_k(weight, ties):
    # Scores on a coarse grid tie often; every target is inside its row's terms in half the rows. The ranks must be
    # target_ranks' of base + weight * terms (as add_terms makes them) wherever that is within k, and above k where
    # it is above k.
    generator = torch.Generator().manual_seed(7)
    n_rows, n_items, k = 120, 50, 10
    base = torch.randint(0, 40, (n_rows, n_items), generator=generator).float() / 4
    terms = sparse_terms(n_rows, n_items, 8, generator)
    targets = torch.randint(0, n_items, (n_rows,), generator=generator)
    targets[::2] = terms[1].reshape(n_rows, 8)[::2, 0]  # the target among the terms' columns
    candidate = (base, None if weight == 0 else terms, weight)
    got = candidate_ranks(candidate, targets, ties, BestScores(k))
    full = base if weight == 0 else add_terms(base, terms, weight)
    expected = target_ranks(full, targets, ties)
    within = expected <= k
    assert within.sum() >= 20 and (~within).sum() >= 20  # both cases are exercised
    torch.testing.assert_close(got[within], expected[within])
    assert (got[~within] > k).all()
    if ties != "pessimistic" or weight < 0:  # the full scores are ranked: every rank is exact
        torch.testing.assert_close(got, expected)


def test_candidate_ranks_by_hand_and_with_nan_scores():
    # Row 0: base [3, 1, 2, 0], target item 1 (score 1), terms +2.5 on item 1 and +1 on item 3 -> [3, 3.5, 2, 1]:
    # rank 1. Row 1: base [0, 4, 4, 1], target item 3, terms +3 on item 3 -> 4: pessimistic rank 3 (4, 4, 4).
    base = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 4.0, 1.0]])
    terms = (torch.tensor([0, 0, 1]), torch.tensor([1, 3, 3]), torch.tensor([2.5, 1.0, 3.0]))
    targets = torch.tensor([1, 3])
    assert candidate_ranks((base, terms, 1.0), targets, "pessimistic", BestScores(2)).tolist() == [1.0, 3.0]
    assert candidate_ranks((base, terms, 1.0), targets, "pessimistic", BestScores(1)).tolist() == [1.0, 2.0]
    assert candidate_ranks((base, None, 0.0), targets, "pessimistic", BestScores(2)).tolist() == [3.0, 3.0]
    # A NaN score anywhere in the base: the full scores are ranked, as target_ranks does (a NaN target: n_items).
    base[1, 0] = math.nan
    got = candidate_ranks((base, terms, 1.0), targets, "pessimistic", BestScores(2))
    assert got.tolist() == target_ranks(add_terms(base, terms, 1.0), targets).tolist() == [1.0, 3.0]
    base[0, 1] = math.nan
    assert candidate_ranks((base, None, 0.0), targets, "pessimistic", BestScores(2)).tolist() == [4.0, 3.0]
