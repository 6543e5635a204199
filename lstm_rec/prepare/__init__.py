"""Raw click logs of the public session datasets (or your own) into train/test splits for data=files."""

from lstm_rec.prepare.events import Events, PrepareError
from lstm_rec.prepare.job import Recipe, prepare, prepare_data, train_commands
from lstm_rec.prepare.protocol import SPLITS, Prepared, Protocol

__all__ = [
    "SPLITS",
    "Events",
    "PrepareError",
    "Prepared",
    "Protocol",
    "Recipe",
    "prepare",
    "prepare_data",
    "train_commands",
]
