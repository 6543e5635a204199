"""Run outputs: metrics.json, the final table, and the hyperparameters with final metrics for TensorBoard."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def write_json(data: Mapping[str, Any], path: str | Path, sort_keys: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(data), indent=2, sort_keys=sort_keys) + "\n")
    return path


def metrics_table(metrics: Mapping[str, float], ks: Sequence[int], splits: Sequence[str] = ("val", "test")) -> str:
    """A markdown table: one row per model and split, Recall@k and MRR@k columns.

    Rows come from keys ``{split}/recall@k`` (the LSTM), ``selected/{split}/recall@k`` (after a refit: the network
    whose validation chose the epochs, before the refit; the LSTM's val row is its own) and ``pop/{split}/recall@k``
    (popularity).
    """
    columns = [f"{name}@{k}" for k in ks for name in ("recall", "mrr")]
    lines = [
        "| model | split | " + " | ".join(columns) + " | predictions |",
        "|---|---|" + "---:|" * (len(columns) + 1),
    ]
    for model, prefix in (("LSTM", ""), ("LSTM before refit or top-up", "selected/"), ("popularity", "pop/")):
        for split in splits:
            if f"{prefix}{split}/{columns[0]}" not in metrics:
                continue
            values = [_fmt(metrics.get(f"{prefix}{split}/{c}")) for c in columns]
            count = metrics.get(f"{prefix}{split}/n_predictions")
            lines.append(f"| {model} | {split} | " + " | ".join(values) + f" | {_fmt(count, '.0f')} |")
    return "\n".join(lines)


def comparison_table(results: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> str:
    """A markdown table of models: Recall@k and MRR@k, then coverage, popularity bias and timings at the largest k."""
    k_max = max(ks)
    columns = [f"test/{name}@{k}" for k in ks for name in ("recall", "mrr")]
    columns += [f"test/ndcg@{k_max}", f"test/coverage@{k_max}", f"test/popularity_bias@{k_max}", "test/n_predictions"]
    columns += ["fit_seconds", "predict_seconds"]
    frame = pd.DataFrame.from_dict(results, orient="index").reindex(columns=columns)
    frame.columns = [c.removeprefix("test/") for c in frame.columns]
    return frame_to_markdown(frame.rename_axis("model").reset_index())


def frame_to_markdown(frame: pd.DataFrame) -> str:
    """A markdown table of a frame; floats with 4 decimals."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    rows = ["| " + " | ".join(map(_cell, record)) + " |" for record in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value, ".0f" if value.is_integer() else ".4f")
    return str(value)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a/b": value}, with values TensorBoard's HPARAMS tab accepts."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}/")
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = "None" if value is None else value
        else:
            flat[name] = str(value)
    return flat
