"""The comparison job (scripts/evaluate.py): LSTM checkpoints and baselines ranked on one test set by the same code."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from lstm_rec.baselines import Popularity
from lstm_rec.checkpoint import TrainedModel, load_network
from lstm_rec.data import ItemIndex, SessionDataModule
from lstm_rec.evaluation import CatalogScorer, RankedPredictions, SessionScorer, breakdown, collect_ranks, metrics_of
from lstm_rec.jobs.environment import write_environment
from lstm_rec.jobs.report import comparison_table, frame_to_markdown, write_json
from lstm_rec.jobs.runs import prepare_run

log = logging.getLogger(__name__)


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (one or more) and the baselines in ``cfg.models`` on ``cfg.data``'s test set.

    Writes comparison.json/.md/.csv, breakdown tables when asked, and, when there is a checkpoint,
    metrics.json with its test metrics beside popularity's. Returns the comparison.
    """
    prepare_run(cfg)
    device = _device(cfg.device)
    checkpoints = _checkpoint_paths(cfg.ckpt_path)
    models = {name: load_network(path, device) for name, path in checkpoints.items()}
    if not models and not cfg.models:
        raise ValueError("nothing to evaluate: set ckpt_path=PATH and/or models=[pop,sr,...]")
    datamodule = instantiate(cfg.data)
    if models:
        # The checkpoints' items, then data.train's others (every model ranks the same predictions: a test click on
        # an item a checkpoint does not know is a blank input and a miss for it, as for a service running it).
        datamodule.known_items = _shared_index(models, checkpoints)
        datamodule.valid_fraction = 0  # nothing is held out of data.train here
    datamodule.setup("test")
    if models and len(datamodule.item_index) > len(datamodule.known_items):
        log.warning(
            "%d items of data.train are not in the checkpoint's index: its test clicks on them count as blank inputs "
            "and misses for the checkpoint",
            len(datamodule.item_index) - len(datamodule.known_items),
        )
    if cfg.models and datamodule.train_sessions is None:
        raise ValueError(f"baselines {list(cfg.models)} are fitted on training data: set data.train=PATH")

    ks, loader, counts = list(cfg.ks), datamodule.test_dataloader(), datamodule.item_index.counts

    def run(scorer: SessionScorer, scorer_device: torch.device) -> RankedPredictions:
        return collect_ranks(scorer, loader, max(ks), cfg.ties, scorer_device, cfg.max_scores)

    ranked, results = _rank_all(run, models, device, cfg, datamodule)
    for name in results:
        results[name] = metrics_of(ranked[name], ks, "test/", counts) | results[name]
        log.info("%s: %s", name, {k: round(v, 4) for k, v in results[name].items()})

    out = Path(cfg.paths.output_dir)
    _write_comparison(results, ks, out)
    write_environment(out)
    for by in cfg.breakdown:
        _write_breakdown(ranked, ks, by, out)
    if models:
        first = next(iter(models))
        popularity = ranked["pop"] if "pop" in ranked else run(Popularity(counts), torch.device("cpu"))
        metrics = results[first] | metrics_of(popularity, ks, "pop/test/", counts)
        write_json(metrics | {"checkpoint": checkpoints[first], "output_dir": str(out)}, out / "metrics.json")
    return results


def _rank_all(
    run: Callable[[SessionScorer, torch.device], RankedPredictions],
    models: dict[str, TrainedModel],
    device: torch.device,
    cfg: DictConfig,
    datamodule: SessionDataModule,
) -> tuple[dict[str, RankedPredictions], dict[str, dict[str, Any]]]:
    """Ranked predictions of every checkpoint, then every baseline (fitted here), with their timings."""
    results: dict[str, dict[str, Any]] = {}
    ranked: dict[str, RankedPredictions] = {}
    for name, model in models.items():
        scorer = model.scorer()
        if len(datamodule.item_index) > len(model.item_index):
            scorer = CatalogScorer(scorer, model.item_index, datamodule.item_index).to(device)
        ranked[name], seconds = _timed(lambda s=scorer: run(s, device))
        results[name] = {"fit_seconds": model.train_seconds, "predict_seconds": seconds}
    n_items = len(datamodule.item_index)
    for name in cfg.models:
        baseline, fit_seconds = _timed(lambda n=name: _baseline(cfg, n).fit(datamodule.train_sessions, n_items))
        ranked[name], seconds = _timed(lambda b=baseline: run(b, torch.device("cpu")))
        results[name] = {"fit_seconds": fit_seconds, "predict_seconds": seconds}
    return ranked, results


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _checkpoint_paths(ckpt_path: str | ListConfig | None) -> dict[str, str]:
    """Model names for the checkpoints: "lstm" for one, "lstm_1", "lstm_2", ... for several."""
    if ckpt_path is None:
        return {}
    paths = [str(ckpt_path)] if isinstance(ckpt_path, str) else [str(p) for p in ckpt_path]
    return {"lstm": paths[0]} if len(paths) == 1 else {f"lstm_{i}": p for i, p in enumerate(paths, start=1)}


def _shared_index(models: dict[str, TrainedModel], paths: dict[str, str]) -> ItemIndex:
    """The item index of the checkpoints, which must agree so that every model ranks the same predictions."""
    first_name, first = next(iter(models.items()))
    for name, model in models.items():
        if model.item_index != first.item_index:
            raise ValueError(
                f"checkpoints '{paths[first_name]}' and '{paths[name]}' were trained on different item sets, so "
                "they cannot be ranked on the same predictions; evaluate them in separate runs"
            )
    return first.item_index


def _baseline(cfg: DictConfig, name: str) -> Any:
    if name not in cfg.baselines:
        raise ValueError(f"unknown model {name!r} in models; expected any of {list(cfg.baselines)}")
    return instantiate(cfg.baselines[name])


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _write_comparison(results: dict[str, dict[str, Any]], ks: list[int], out: Path) -> None:
    write_json(results, out / "comparison.json", sort_keys=False)  # models in the order asked
    pd.DataFrame.from_dict(results, orient="index").rename_axis("model").to_csv(out / "comparison.csv")
    (out / "comparison.md").write_text(comparison_table(results, ks) + "\n")


def _write_breakdown(ranked: dict[str, RankedPredictions], ks: list[int], by: str, out: Path) -> None:
    table = pd.concat([breakdown(r, ks, by).assign(model=name) for name, r in ranked.items()], ignore_index=True)
    table = table[["model", *table.columns.drop("model")]]
    table.to_csv(out / f"breakdown_{by}.csv", index=False)
    (out / f"breakdown_{by}.md").write_text(frame_to_markdown(table) + "\n")
