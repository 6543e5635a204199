"""lstm_rec: session-based next-item recommendation with an LSTM, Lightning and Hydra."""

from lstm_rec.recommender import Recommendations, Recommender

__all__ = ["Recommendations", "Recommender"]
__version__ = "0.1.0"
