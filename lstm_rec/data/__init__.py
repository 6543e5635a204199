"""Click logs: reading, filtering and indexing into compact arrays, generation, batching."""

from lstm_rec.data.datamodule import FileDataModule, SessionDataModule, SyntheticDataModule
from lstm_rec.data.sessions import ItemIndex, Sessions

__all__ = ["FileDataModule", "ItemIndex", "SessionDataModule", "Sessions", "SyntheticDataModule"]
