"""Baselines behind the LSTM's scoring interface: fit on training sessions, score all items for a prefix."""

from lstm_rec.baselines.base import Baseline
from lstm_rec.baselines.knn import VSKNN, SessionKNN
from lstm_rec.baselines.popularity import Popularity, SessionPopularity
from lstm_rec.baselines.rules import ItemKNN, Markov, SequentialRules

__all__ = ["VSKNN", "Baseline", "ItemKNN", "Markov", "Popularity", "SequentialRules", "SessionKNN", "SessionPopularity"]
