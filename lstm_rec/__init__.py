"""lstm_rec: session-based next-item recommendation with an LSTM, Lightning and Hydra."""

__version__ = "0.1.0"
