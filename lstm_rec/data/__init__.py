"""Click logs: reading, filtering and indexing into compact arrays, generation, batching.

The DataModules (Lightning) load on first use, so that scoring and data preparation never import Lightning.
"""

from typing import Any

from lstm_rec.data.sessions import ItemIndex, Sessions

__all__ = ["FileDataModule", "ItemIndex", "SessionDataModule", "Sessions", "SyntheticDataModule"]


def __getattr__(name: str) -> Any:
    if name in ("FileDataModule", "SessionDataModule", "SyntheticDataModule"):
        from lstm_rec.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'lstm_rec.data' has no attribute {name!r}")
