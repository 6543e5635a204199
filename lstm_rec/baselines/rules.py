"""Baselines that score from the session's last item: Markov chain, sequential rules, item-kNN."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lstm_rec.baselines.base import Baseline, keep_top_per_row, session_item_matrix
from lstm_rec.baselines.prefixes import PrefixSummary
from lstm_rec.data.sessions import Sessions

_WEIGHTINGS = {
    "same": lambda d: np.ones_like(d, dtype=np.float64),
    "div": lambda d: 1.0 / d,
    "quadratic": lambda d: 1.0 / d**2,
    "linear": lambda d: np.maximum(1.0 - 0.1 * d, 0.0),
    "log": lambda d: 1.0 / np.log10(d + 1.7),
}


class LastItemBaseline(Baseline):
    """Scores are one row of an item-to-item matrix: the row of the prefix's last item."""

    transitions: sp.csr_matrix

    def score_summary(self, prefixes: PrefixSummary) -> np.ndarray:
        return self.transitions[prefixes.last_item - 1].toarray()


class SequentialRules(LastItemBaseline):
    """Sequential rules (Ludewig & Jannach): rule i -> j gains w(d) when j follows i by d <= `steps` clicks.

    Args:
        steps: largest distance d that makes a rule.
        weighting: w(d): "quadratic" 1/d^2, "div" 1/d, "same" 1, "linear" 1 - 0.1 d, "log" 1/log10(d + 1.7).
        pruning: keep only the strongest `pruning` successors of each item (0 keeps all).
    """

    def __init__(self, steps: int = 20, weighting: str = "quadratic", pruning: int = 20) -> None:
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {sorted(_WEIGHTINGS)}, got {weighting!r}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.steps, self.weighting, self.pruning = steps, weighting, pruning

    def fit(self, sessions: Sessions, n_items: int) -> SequentialRules:
        self.n_items = n_items
        position = np.arange(sessions.n_events) - np.repeat(sessions.offsets[:-1], sessions.lengths)
        antecedents, consequents, weights = [], [], []
        for d in range(1, min(self.steps, int(sessions.lengths.max()) - 1) + 1):
            later = np.flatnonzero(position >= d)  # clicks with a click d steps before them in their session
            antecedents.append(sessions.items[later - d] - 1)
            consequents.append(sessions.items[later] - 1)
            weights.append(np.full(len(later), _WEIGHTINGS[self.weighting](np.float64(d))))
        rules = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(antecedents), np.concatenate(consequents))),
            shape=(n_items, n_items),
        )
        rules.sum_duplicates()
        self.transitions = keep_top_per_row(rules, self.pruning) if self.pruning > 0 else rules
        return self


class Markov(SequentialRules):
    """First-order Markov chain: counts of j directly after i (sequential rules with steps 1)."""

    def __init__(self, pruning: int = 20) -> None:
        super().__init__(steps=1, weighting="same", pruning=pruning)


class ItemKNN(LastItemBaseline):
    """Item-kNN (Hidasi et al.): items similar to the last one by session co-occurrence.

    sim(i, j) = cooc(i, j) / ((supp(i) + lmbd)^alpha * (supp(j) + lmbd)^(1 - alpha)), with cooc the sum
    over sessions of clicks(i) * clicks(j) and supp the training clicks; alpha 0.5 and lmbd 0 is the
    cosine. Each item keeps its `n_sims` most similar items.
    """

    def __init__(self, n_sims: int = 100, lmbd: float = 20.0, alpha: float = 0.5) -> None:
        self.n_sims, self.lmbd, self.alpha = n_sims, lmbd, alpha

    def fit(self, sessions: Sessions, n_items: int) -> ItemKNN:
        self.n_items = n_items
        clicks = session_item_matrix(sessions, n_items, binary=False)
        cooc = sp.csr_matrix(clicks.T @ clicks)
        cooc.setdiag(0)
        cooc.eliminate_zeros()
        support = np.asarray(clicks.sum(axis=0)).ravel() + self.lmbd
        left = sp.diags(1.0 / support**self.alpha)
        right = sp.diags(1.0 / support ** (1.0 - self.alpha))
        self.transitions = keep_top_per_row(sp.csr_matrix(left @ cooc @ right), self.n_sims)
        return self
