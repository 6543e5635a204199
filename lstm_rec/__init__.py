"""lstm_rec: session-based next-item recommendation with an LSTM, Lightning and Hydra.

`from lstm_rec import Recommender` loads the serving API on first use; `import lstm_rec` alone loads neither
torch nor Lightning.
"""

from typing import Any

__all__ = ["Recommendations", "Recommender"]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lstm_rec.serving import recommender

        return getattr(recommender, name)
    raise AttributeError(f"module 'lstm_rec' has no attribute {name!r}")
