"""The kNN blend: V-SKNN's scores over the training sessions, added to the network's at inference.

A session kNN remembers which items whole training sessions shared; the network learns it only as far as its weights
hold it. Each item's kNN score s after a prefix becomes log(1 + scale * s / s_max), s_max the prefix's best (so that it
means the same on any log, and an item a few neighbours vote for already counts), and is added with a weight: the
items similar sessions went on to climb the network's ranking. Items no neighbour votes for get nothing, so the blend
touches a few hundred scores of a prefix, not the catalog. blend=auto chooses the weight (and the kNN's
vote among a few variants) on the validation sessions, as prior=auto chooses the prior.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lstm_rec.baselines import VSKNN
from lstm_rec.baselines.prefixes import Prefixes
from lstm_rec.data.sessions import NoClickTimesError, Sessions
from lstm_rec.evaluation import (
    CHUNK_SCORES,
    RankedPredictions,
    Ranking,
    best_row,
    eval_mode,
    metrics_of,
    prediction_layout,
)
from lstm_rec.metrics import target_ranks

log = logging.getLogger(__name__)

# V-SKNN's settings that a blend may set (lstm_rec.baselines.VSKNN), and the blend's defaults: the baseline's
# (conf/baselines) but for the similarity, which counts every shared prefix item alike (weighting "same") where the
# baseline weighs later clicks more (quadratic). The network already follows the latest clicks; the kNN adds most by
# matching the whole prefix. On both logs' tuning splits, for the same networks, that ranked better at every weight
# (docs/tuning-log.md#the-knns-similarity-in-the-blend). And a neighbour's items count the more the nearer they lie
# to the item it shares with the prefix (distance_decay, in clicks), which ranked better on both logs' tuning splits
# (docs/tuning-log.md#the-neighbours-items-near-the-shared-one).
DISTANCE_DECAY = 2.0
KNN_SETTINGS = {
    "k": 500,
    "sample_size": 5000,
    "weighting": "same",
    "weighting_score": "div",
    "idf_weighting": 5.0,
    "distance_decay": DISTANCE_DECAY,
}
# What a checkpoint's blend settings leave out means what it meant when it was written: blends saved before
# distance_decay existed counted every item of a neighbour alike.
SAVED_DEFAULTS = {"distance_decay": None}


# The repeat bonus's shapes: what an item the session clicked before gets, as a function of d, the clicks between its
# latest click and the end of the prefix (0: the latest click is on it), and n, the prefix's distinct items. "spread"
# shares one bonus among the clicked items, so that a long session's items do not all climb above the new items the
# network ranks best. yoochoose-100k's tuning split ranked best with the latest click or the recent ones lifted,
# retailrocket-sessions' with every clicked item lifted, spread (docs/tuning-log.md#a-repeat-bonus-at-inference,
# docs/tuning-log.md#the-repeat-bonus-spread-over-the-sessions-items).
REPEAT_SHAPES = {
    "all": lambda d, n: torch.ones_like(d),
    "recent": lambda d, n: torch.exp(-d / 2),
    "last": lambda d, n: (d == 0).to(d.dtype),
    "spread": lambda d, n: 1 / n,
}


@dataclass(frozen=True)
class RepeatBonus:
    """A bonus added at inference to the scores of the items the session has clicked: `weight` times the shape's
    value (REPEAT_SHAPES) of how many clicks back the item's latest click lies and how many items the session holds.
    The network learns repeats only as far as its weights hold them; the bonus is chosen per log on the validation
    sessions (blend=auto's repeat_weights), as the kNN blend's weight is. A weight below 0 lowers the clicked items
    instead: on a log whose sessions seldom return to an item (ratings, where each item is rated once) the session's
    own items are the likeliest wrong answers."""

    shape: str
    weight: float

    def __post_init__(self) -> None:
        if self.shape not in REPEAT_SHAPES:
            raise ValueError(f"the repeat bonus's shape must be one of {sorted(REPEAT_SHAPES)}, got {self.shape!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real) or self.weight == 0:
            raise ValueError(f"the repeat bonus's weight must be a nonzero number, got {self.weight!r}")
        if not math.isfinite(self.weight):
            raise ValueError(f"the repeat bonus's weight must be finite, got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))

    def to_checkpoint(self) -> dict[str, Any]:
        return {"shape": self.shape, "weight": self.weight}

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any] | None) -> RepeatBonus | None:
        return None if entry is None else cls(str(entry["shape"]), float(entry["weight"]))


def repeat_terms(prefixes: Prefixes, shape: str) -> tuple[Tensor, Tensor, Tensor]:
    """The repeat bonus's terms before its weight, over the prefixes flattened in row-major order: (rows, columns,
    the shape's value) for every distinct item of every prefix, float32, on the prefixes' device."""
    summary = prefixes.summary()
    entries = summary.entries
    back = summary.lengths[entries.prefix] - entries.last  # clicks after the item's latest one
    distinct = np.bincount(entries.prefix, minlength=summary.n_prefixes)[entries.prefix]  # the prefix's items
    device = prefixes.device
    rows, columns = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (entries.prefix, entries.column))
    d, n = (torch.from_numpy(a.astype(np.float32)) for a in (back, distinct))
    return rows, columns, REPEAT_SHAPES[shape](d, n).to(device)


def known_settings(settings: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """The V-SKNN `settings` as a dict, checked to hold keys of KNN_SETTINGS only (a ValueError names `name` and the
    unknown keys)."""
    unknown = sorted(set(settings or {}) - set(KNN_SETTINGS))
    if unknown:
        raise ValueError(f"{name} holds V-SKNN's settings {sorted(KNN_SETTINGS)}, got unknown {unknown}")
    return dict(settings or {})


def checked_settings(scale: float, settings: Mapping[str, Any] | None) -> tuple[float, dict[str, Any]]:
    """`scale` (> 0) and the V-SKNN `settings` (keys of KNN_SETTINGS) checked (a ValueError names the key)."""
    if not scale > 0:
        raise ValueError(f"blend.scale (the kNN blend's scale) must be > 0, got {scale!r}")
    return float(scale), known_settings(settings, "blend.knn")


def joined(sessions: Sessions | Sequence[Sessions]) -> Sessions:
    """Several Sessions (items numbered alike, each in time order) as one, in the order given."""
    parts = [sessions] if isinstance(sessions, Sessions) else list(sessions)
    if len(parts) == 1:
        return parts[0]
    items = np.concatenate([part.items for part in parts])
    ends = np.cumsum([part.n_events for part in parts])[:-1]
    later = [part.offsets[1:] + end for part, end in zip(parts[1:], ends, strict=True)]
    offsets = np.concatenate([parts[0].offsets, *later])
    times = None if any(p.times is None for p in parts) else np.concatenate([p.times for p in parts])
    return Sessions(items, offsets, times)


class KNNBlend:
    """V-SKNN fitted on the training sessions, and the weight and scale its scores are added with.

    The sessions are kept (items, offsets and each session's last click time, which orders the neighbours by
    recency), so a checkpoint holds the blend and loading refits the kNN in well under a second.
    """

    def __init__(
        self,
        sessions: Sessions,
        n_items: int,
        weight: float,
        settings: Mapping[str, Any] | None = None,
        scale: float = 100.0,
        repeat: RepeatBonus | None = None,
    ) -> None:
        if not (weight > 0 or (weight == 0 and repeat is not None)):
            raise ValueError(f"the kNN blend's weight must be > 0 (or 0 with a repeat bonus), got {weight!r}")
        scale, settings = checked_settings(scale, settings)
        if sessions.times is None:
            raise NoClickTimesError(
                "the kNN blend (blend=...) needs the training sessions' click times, which order the neighbours by "
                "recency; switch it off with ~blend for data without them"
            )
        self.sessions, self.n_items, self.weight, self.scale = sessions, n_items, float(weight), scale
        self.settings = KNN_SETTINGS | settings
        self.knn = VSKNN(**self.settings).fit(sessions, n_items)
        self.repeat = repeat

    @classmethod
    def fit(
        cls,
        sessions: Sessions | Sequence[Sessions],
        n_items: int,
        weight: float,
        settings: Mapping[str, Any] | None = None,
        scale: float = 100.0,
        repeat: RepeatBonus | None = None,
    ) -> KNNBlend:
        """The blend of `sessions` (several, numbered alike, count as one log) over `n_items` items."""
        sessions = joined(sessions)
        blend = cls(sessions, n_items, weight, settings, scale, repeat)
        log.info(
            "kNN blend: V-SKNN over %d training sessions (%d clicks), weight %g, scale %g%s",
            sessions.n_sessions, sessions.n_events, blend.weight, blend.scale,
            "" if repeat is None else f"; repeat bonus {repeat.shape} at {repeat.weight:g}",
        )  # fmt: skip
        return blend

    def terms(self, prefixes: Prefixes) -> tuple[Tensor, Tensor, Tensor]:
        """The blend's nonzero terms before the weight, over the prefixes flattened in row-major order: (rows,
        columns, log(1 + scale * s / s_max)), float32, on the prefixes' device."""
        votes = self.knn.sparse_scores(prefixes.summary())
        best = votes.max(axis=1).toarray().ravel()
        votes = votes.tocoo()
        ratio = votes.data / np.maximum(best[votes.row], np.finfo(np.float64).tiny)
        values = np.log1p(self.scale * ratio).astype(np.float32)
        device = prefixes.device
        rows, columns = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (votes.row, votes.col))
        return rows, columns, torch.from_numpy(values).to(device)

    def add_to(self, scores: Tensor, prefixes: Prefixes) -> Tensor:
        """`scores` (*prefixes, n_items) plus the blend's kNN terms times its weight and its repeat bonus, as a new
        tensor."""
        if self.weight > 0:
            scores = add_terms(scores, self.terms(prefixes), self.weight)
        if self.repeat is not None:
            scores = add_terms(scores, repeat_terms(prefixes, self.repeat.shape), self.repeat.weight)
        return scores

    def scaled(self, prefixes: Prefixes) -> Tensor:
        """(*prefixes, n_items) the blend's kNN terms before the weight, dense: log(1 + scale * s / s_max)."""
        zeros = torch.zeros((*prefixes.rows.shape, self.n_items), device=prefixes.device)
        return add_terms(zeros, self.terms(prefixes), 1.0)

    def to_checkpoint(self) -> dict[str, Any]:
        sessions = self.sessions
        return {
            "weight": self.weight,
            "scale": self.scale,
            "settings": dict(self.settings),
            "items": torch.from_numpy(sessions.items.astype(np.int32)),
            "offsets": torch.from_numpy(sessions.offsets.astype(np.int64)),
            "last_times": torch.from_numpy(sessions.last_times.astype(np.float64)),
            "repeat": None if self.repeat is None else self.repeat.to_checkpoint(),
        }

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any] | None, n_items: int) -> KNNBlend | None:
        if entry is None:
            return None
        items = entry["items"].numpy().astype(np.int64)
        offsets = entry["offsets"].numpy()
        # Only each session's last click time matters to the kNN (its recency): every click gets its session's.
        times = np.repeat(entry["last_times"].numpy(), np.diff(offsets))
        settings = SAVED_DEFAULTS | dict(entry["settings"])
        repeat = RepeatBonus.from_checkpoint(entry.get("repeat"))  # blends saved before the bonus have none
        return cls(Sessions(items, offsets, times), n_items, float(entry["weight"]), settings, entry["scale"], repeat)


def add_terms(scores: Tensor, terms: tuple[Tensor, Tensor, Tensor], weight: float) -> Tensor:
    """`scores` (*prefixes, n_items) with `weight` times the blend's `terms` (KNNBlend.terms) added, as a new tensor."""
    rows, columns, values = terms
    flat = scores.reshape(-1, scores.shape[-1]).clone()
    flat[rows, columns] += weight * values.to(flat.device, flat.dtype)
    return flat.view(scores.shape)


class BestScores:
    """Each row's `k` + 1 best scores of a base, found once for all the candidates on it (one chunk's)."""

    def __init__(self, k: int) -> None:
        self.k, self.base, self.values = k, None, None

    def of(self, base: Tensor) -> Tensor | None:
        """(rows, k + 1) best scores of `base`, in descending order; None where they cannot decide a rank: a catalog
        of at most k + 1 items, or a NaN score (topk puts NaN first, so a row with one has it among its best)."""
        if self.base is not base:
            values = base.topk(self.k + 1, dim=1).values if self.k + 1 < base.shape[1] else None
            self.base, self.values = base, None if values is None or bool(values.isnan().any()) else values
        return self.values


def candidate_ranks(candidate: Candidate, targets: Tensor, ties: str, best: BestScores) -> Tensor:
    """The pessimistic rank of each target under a candidate's scores (base + weight * terms) without making those
    scores: exact up to best.k, and some number above best.k beyond it (best.k + 1 where the base alone decides). A
    rank needs only how many base scores reach the target's, which the base's k + 1 best decide whenever the rank is
    within k, and how the terms' few entries change that count. Terms that lower scores (weight < 0), another tie
    policy or a base that BestScores cannot use ranks the candidate's full scores (target_ranks)."""
    base, terms, weight = candidate
    top = best.of(base) if ties == "pessimistic" and weight >= 0 else None
    if top is None:
        return target_ranks(base if terms is None else add_terms(base, terms, weight), targets, ties)
    n_items = base.shape[1]
    target = base.gather(1, targets[:, None])[:, 0]
    if terms is not None:
        rows, columns, values = terms
        before = base[rows, columns]
        after = before + weight * values.to(base.device, base.dtype)  # as add_terms computes them
        is_target = columns == targets[rows]
        target = target.index_put((rows[is_target],), after[is_target])
    # Base scores at or above the target's: exact when the target's score beats the (k + 1)-th best, else > k.
    counted = (top >= target[:, None]).sum(dim=1)
    if terms is not None:  # the terms' entries: counted by their new scores in place of their base scores
        change = (after >= target[rows]).to(counted.dtype) - (before >= target[rows]).to(counted.dtype)
        counted = counted.index_add(0, rows, change)
    # Below the (k + 1)-th best the base alone counts k + 1, and terms that only raise scores count no fewer.
    ranks = torch.where(target > top[:, -1], counted, best.k + 1).double()
    return torch.where(target.isnan(), float(n_items), ranks)


@dataclass
class BlendStates:
    """The network's states and the kNN's prefixes, indexed alike."""

    network: Any
    prefixes: Prefixes

    def __getitem__(self, index: Any) -> BlendStates:
        return BlendStates(self.network[index], self.prefixes[index])

    def __len__(self) -> int:
        return len(self.prefixes)


@dataclass
class BlendCarry:
    """A live session between clicks: the network's carry and the clicks so far (B, T)."""

    network: Any
    items: Tensor


class BlendScorer(nn.Module):
    """A scorer (the network) whose scores get the kNN blend's weighted, scaled scores added."""

    def __init__(self, scorer: Any, blend: KNNBlend) -> None:
        super().__init__()
        if blend.n_items != scorer.n_items:
            raise ValueError(f"the kNN blend scores {blend.n_items} items, the network {scorer.n_items}")
        self.scorer, self.blend = scorer, blend

    @property
    def n_items(self) -> int:
        return self.scorer.n_items

    def encode(self, items: Tensor) -> BlendStates:
        return BlendStates(self.scorer.encode(items), Prefixes.of(items))

    def forward(self, items: Tensor, carry: BlendCarry | None = None) -> tuple[BlendStates, BlendCarry]:
        states, network_carry = self.scorer(items, None if carry is None else carry.network)
        clicks = items if carry is None else torch.cat([carry.items, items], dim=1)
        prefixes = Prefixes.of(clicks)[:, clicks.shape[1] - items.shape[1] :]
        return BlendStates(states, prefixes), BlendCarry(network_carry, clicks)

    def score(self, states: BlendStates) -> Tensor:
        return self.blend.add_to(self.scorer.score(states.network), states.prefixes)


class KNNBlendSearch:
    """blend=auto: the kNN blend (its V-SKNN settings among `knn_variants`, and its weight) that ranks the validation
    sessions best, or none; then, with `repeat_weights`, the repeat bonus (each of `repeat_shapes` at each weight, or
    none) that ranks them best on top of it.

    Chosen after training (and after prior=auto's choice) on the tested network and the validation sessions: the
    network's scores and each variant's kNN scores are computed once, and every weight of every variant (and no blend)
    ranks with their sum.
    """

    def __init__(
        self,
        weights: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
        scale: float = 100.0,
        knn: Mapping[str, Any] | None = None,
        knn_variants: Sequence[Mapping[str, Any]] | None = None,
        repeat_weights: Sequence[float] = (),
        repeat_shapes: Sequence[str] = tuple(REPEAT_SHAPES),
    ) -> None:
        if not weights or any(not w > 0 for w in weights):
            raise ValueError(f"blend.weights must be a non-empty list of weights > 0, got {list(weights)!r}")
        if any(not (math.isfinite(w) and w != 0) for w in repeat_weights):
            raise ValueError(
                "blend.repeat_weights must be finite nonzero weights (below 0: the clicked items are lowered; empty: "
                f"no repeat bonus), got {list(repeat_weights)!r}"
            )
        unknown = sorted(set(repeat_shapes) - set(REPEAT_SHAPES))
        if unknown or (repeat_weights and not repeat_shapes):
            raise ValueError(
                f"blend.repeat_shapes must be some of {sorted(REPEAT_SHAPES)}, got {list(repeat_shapes)!r}"
            )
        self.scale, self.knn = checked_settings(scale, knn)
        self.weights = [float(w) for w in weights]
        # Each variant: the settings it changes over `knn` (an empty one: `knn` itself).
        variants = [known_settings(variant, "blend.knn_variants") for variant in (knn_variants or [{}])]
        self.variants = [self.knn | variant for variant in variants]
        self.repeat_weights = [float(w) for w in repeat_weights]
        self.repeat_shapes = list(repeat_shapes)

    @torch.no_grad()
    def choose(
        self,
        scorer: Any,
        sessions: Sessions,
        n_items: int,
        batches: Iterable[Tensor],
        metric: str,
        ranking: Ranking,
        repeat: RepeatBonus | None = None,
    ) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
        """The best weight (0: no blend ranked best), the V-SKNN settings it came with (those over the blend's
        defaults, KNN_SETTINGS; the first variant's with no blend) and every candidate's validation metrics, by
        `metric`. `scorer` scores the `n_items` items of `sessions` (with the chosen prior, if any); `batches` are the
        validation sessions'; `repeat`, a repeat bonus every candidate gets (None: none). Ties go to the earlier
        candidate: no blend, then each variant's weights in order."""
        blends = [KNNBlend(sessions, n_items, 1.0, variant, self.scale) for variant in self.variants]
        # The candidates: (variant, weight); no blend first.
        candidates = [(0, 0.0)] + [(v, w) for v in range(len(blends)) for w in self.weights]

        def scores_of(base: Tensor, prefixes: Prefixes) -> Iterator[Candidate]:
            if repeat is not None:
                base = add_terms(base, repeat_terms(prefixes, repeat.shape), repeat.weight)
            terms = [blend.terms(prefixes) for blend in blends]
            for variant, weight in candidates:
                yield (base, None, 0.0) if weight == 0 else (base, terms[variant], weight)

        metrics = _rank_candidates(scorer, n_items, batches, scores_of, len(candidates), ranking)
        table = []
        for (variant, weight), values in zip(candidates, metrics, strict=True):
            knn = dict(self.variants[variant]) if weight > 0 else {}
            table.append({"weight": weight, "knn": knn} | values)
        best = best_row(table, metric)  # ties: the earlier candidate
        variant, weight = candidates[best]
        return weight, dict(self.variants[variant]), table

    def choose_all(
        self,
        scorer: Any,
        sessions: Sessions,
        n_items: int,
        batches: Iterable[Tensor],
        metric: str,
        ranking: Ranking,
    ) -> BlendChoice:
        """The kNN (choose), then the repeat bonus on top of it (choose_repeat), then, when the bonus chosen lowers the
        clicked items (a weight below 0), the kNN again on top of it: the neighbours' votes for the session's own
        items, which cost the kNN its first choice on a log whose sessions do not return to an item, no longer count
        against it. After a bonus that lifts them the first choice stands: on both tuning splits choosing again
        traded Recall@20 for MRR@20 (docs/tuning-log.md#a-negative-repeat-bonus). `batches` (the validation
        sessions') are read once per step, so they must be re-iterable (a list, a DataLoader)."""
        weight, knn, knn_table = self.choose(scorer, sessions, n_items, batches, metric, ranking)
        first = (weight, knn)
        if not self.repeat_weights:
            return BlendChoice(weight, knn, None, knn_table, [], [], first)
        chosen = KNNBlend(sessions, n_items, weight, knn, self.scale) if weight > 0 else None
        bonus, repeat_table = self.choose_repeat(scorer, chosen, n_items, batches, metric, ranking)
        if bonus is None or bonus.weight > 0:
            return BlendChoice(weight, knn, bonus, knn_table, repeat_table, [], first)
        weight, knn, again = self.choose(scorer, sessions, n_items, batches, metric, ranking, repeat=bonus)
        return BlendChoice(weight, knn, bonus, knn_table, repeat_table, again, first)

    @torch.no_grad()
    def choose_repeat(
        self,
        scorer: Any,
        blend: KNNBlend | None,
        n_items: int,
        batches: Iterable[Tensor],
        metric: str,
        ranking: Ranking,
    ) -> tuple[RepeatBonus | None, list[dict[str, Any]]]:
        """The repeat bonus (None: none ranked best; always None without repeat_weights) that ranks the validation
        `batches` best by `metric` on top of `scorer` (the network with its prior) and the chosen kNN `blend` (None:
        none), and every candidate's validation metrics. Ties go to the earlier candidate: none, then each shape's
        weights in order."""
        if not self.repeat_weights:
            return None, []
        candidates = [None] + [RepeatBonus(shape, w) for shape in self.repeat_shapes for w in self.repeat_weights]

        def scores_of(base: Tensor, prefixes: Prefixes) -> Iterator[Candidate]:
            if blend is not None:
                base = add_terms(base, blend.terms(prefixes), blend.weight)
            terms = {shape: repeat_terms(prefixes, shape) for shape in self.repeat_shapes}
            for bonus in candidates:
                yield (base, None, 0.0) if bonus is None else (base, terms[bonus.shape], bonus.weight)

        metrics = _rank_candidates(scorer, n_items, batches, scores_of, len(candidates), ranking)
        table = [
            {"repeat": None if bonus is None else bonus.to_checkpoint()} | values
            for bonus, values in zip(candidates, metrics, strict=True)
        ]
        best = best_row(table, metric)  # ties: the earlier candidate
        return candidates[best], table


@dataclass
class BlendChoice:
    """blend=auto's choice (KNNBlendSearch.choose_all): the kNN's weight (0: none) and V-SKNN settings, the repeat
    bonus (None: none), and the validation metrics of every candidate of each step: the kNN alone (`knn_table`), the
    bonus on top of it (`repeat_table`, empty without repeat weights) and, when the bonus chosen is below 0, the kNN
    again on top of it (`knn_table_with_repeat`, else empty); `first`, the kNN's weight and settings the first step
    chose."""

    weight: float
    knn: dict[str, Any]
    repeat: RepeatBonus | None
    knn_table: list[dict[str, Any]]
    repeat_table: list[dict[str, Any]]
    knn_table_with_repeat: list[dict[str, Any]]
    first: tuple[float, dict[str, Any]]


# A candidate's scores: a base (rows, n_items) plus `weight` times sparse terms (rows, columns, values) as add_terms
# adds them; (base, None, 0.0) is the base alone.
Candidate = tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None, float]


def _rank_candidates(
    scorer: Any,
    n_items: int,
    batches: Iterable[Tensor],
    scores_of: Callable[[Tensor, Prefixes], Iterator[Candidate]],
    n_candidates: int,
    ranking: Ranking,
) -> list[dict[str, float]]:
    """The validation metrics of each candidate whose scores `scores_of` yields (in order) from the scorer's scores
    and the prefixes of a chunk of predictions: the network's states are computed once per batch, and each base's
    best scores once per chunk (candidate_ranks). The metrics are at ranking.ks only: a rank above max(ks) is some
    number above it."""
    parts: list[list[RankedPredictions]] = [[] for _ in range(n_candidates)]
    rows = max(1, min(ranking.max_scores, CHUNK_SCORES) // n_items)  # predictions scored at a time
    with eval_mode(scorer):
        for batch in batches:
            inputs, is_target, targets, where = prediction_layout(batch.to(ranking.device))
            states, prefixes = scorer.encode(inputs)[is_target], Prefixes.of(inputs)[is_target]
            ranks: list[list[Tensor]] = [[] for _ in range(n_candidates)]
            for begin in range(0, len(targets), rows):
                part, best = slice(begin, begin + rows), BestScores(max(ranking.ks))
                for i, candidate in enumerate(scores_of(scorer.score(states[part]), prefixes[part])):
                    ranks[i].append(candidate_ranks(candidate, targets[part], ranking.ties, best))
            no_tops = targets.new_zeros(len(targets), 0).cpu()  # the metrics of a choice need no top lists
            where = tuple(place.cpu() for place in where)
            for i in range(n_candidates):
                parts[i].append(RankedPredictions(torch.cat(ranks[i]).cpu(), no_tops, *where))
    metrics = [metrics_of(RankedPredictions.concat(part), ranking.ks, "val/") for part in parts]
    return [{name: values[name] for name in sorted(values)} for values in metrics]
