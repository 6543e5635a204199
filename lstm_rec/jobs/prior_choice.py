"""prior=auto and blend=auto: the recent-popularity prior (lstm_rec.prior) and the kNN blend's weight (lstm_rec.blend)
chosen on the validation sessions after training; a fixed blend (blend=vsknn) is made there too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from lstm_rec.blend import KNN_SETTINGS, KNNBlend, KNNBlendSearch, RepeatBonus
from lstm_rec.checkpoint import CHECKPOINT_KEY, load_network, read_checkpoint
from lstm_rec.evaluation import Ranking
from lstm_rec.prior import ItemPrior, PriorScorer, RecentPopularity, RecentPopularitySearch

if TYPE_CHECKING:
    from collections.abc import Sequence

    import lightning as L

    from lstm_rec.data import SessionDataModule
    from lstm_rec.data.sessions import Sessions
    from lstm_rec.module import SessionRecModule

log = logging.getLogger(__name__)

# The metrics a prior is chosen by: the run's monitor when it is one of these, else MRR at the largest cutoff.
CHOOSABLE = ("val/recall@", "val/mrr@", "val/ndcg@")
SEARCH_TARGET = f"{RecentPopularitySearch.__module__}.{RecentPopularitySearch.__name__}"
RECENT_TARGET = f"{RecentPopularity.__module__}.{RecentPopularity.__name__}"
BLEND_SEARCH_TARGET = f"{KNNBlendSearch.__module__}.{KNNBlendSearch.__name__}"


def is_search(prior_cfg: DictConfig | None) -> bool:
    """Whether the prior config group is prior=auto (chosen after training, none while training)."""
    return prior_cfg is not None and prior_cfg.get("_target_") == SEARCH_TARGET


def choose_prior(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: SessionRecModule,
    datamodule: SessionDataModule,
    checkpoint: str | None,
) -> dict[str, Any] | None:
    """With prior=auto: choose the prior on the validation sessions for the network of `checkpoint` (None: the one in
    memory), set it on `model` and store it in `checkpoint`, so that its test, its metrics and its checkpoint agree.
    Returns the choice ({"weight", "hours", ...}; weight 0 is no prior), or None when the prior is not auto."""
    if not is_search(cfg.get("prior")):
        return None
    search: RecentPopularitySearch = instantiate(cfg.prior)
    choice = _search(cfg, search, model, datamodule, checkpoint) if trainer.is_global_zero else None
    choice = trainer.strategy.broadcast(choice, src=0)
    if choice["weight"] > 0:
        store = checkpoint if trainer.is_global_zero else None
        apply_prior(choice, model, datamodule.train_sessions, datamodule.n_items, store)
    return choice


def apply_prior(
    choice: dict[str, Any],
    model: SessionRecModule,
    sessions: Sessions | Sequence[Sessions],
    n_items: int,
    checkpoint: str | None,
) -> ItemPrior:
    """The chosen prior made from `sessions` (the model's training data), set on `model` and stored in `checkpoint`."""
    prior = RecentPopularity(choice["weight"], choice["hours"]).fit(sessions, n_items)
    model.set_prior(prior)
    if checkpoint is not None:
        store_prior(checkpoint, prior)
    return prior


def store_prior(path: str | Path, prior: ItemPrior | None) -> None:
    """Rewrite the checkpoint at `path` (atomically) with `prior` as its item prior."""
    _store(path, "prior", None if prior is None else prior.to_checkpoint())


def _store(path: str | Path, key: str, value: Any) -> None:
    """Rewrite the checkpoint at `path` (atomically) with `value` as lstm_rec's entry `key`."""
    from lstm_rec.callbacks import AtomicCheckpointIO

    checkpoint = read_checkpoint(path)
    checkpoint[CHECKPOINT_KEY][key] = value
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)


def is_blend_search(blend_cfg: DictConfig | None) -> bool:
    """Whether the blend config group is blend=auto (its weight chosen after training)."""
    return blend_cfg is not None and blend_cfg.get("_target_") == BLEND_SEARCH_TARGET


def fixed_blend(
    blend_cfg: DictConfig, weight: float, knn: dict[str, Any] | None = None, repeat: Any = None
) -> dict[str, Any]:
    """A fixed blend's choice: `weight` with the scale of `blend_cfg` (blend=auto's or blend=vsknn's) and its V-SKNN
    settings, or `knn` (those blend=auto chose) in their place, and the repeat bonus `repeat` ({shape, weight}; None:
    none)."""
    settings = dict(blend_cfg.get("knn") or {}) if knn is None else dict(knn)
    if repeat is not None:
        repeat = RepeatBonus(**dict(repeat)).to_checkpoint()  # checked: a known shape, a weight > 0
    return {"weight": float(weight), "scale": float(blend_cfg.scale), "knn": settings, "repeat": repeat}


def has_blend(choice: dict[str, Any] | None) -> bool:
    """Whether a blend choice adds anything: a kNN weight > 0 or a repeat bonus."""
    return choice is not None and (choice["weight"] > 0 or choice.get("repeat") is not None)


def choose_blend(
    cfg: DictConfig,
    trainer: L.Trainer,
    model: SessionRecModule,
    datamodule: SessionDataModule,
    checkpoint: str | None,
) -> dict[str, Any] | None:
    """With a kNN blend configured (blend=vsknn: its weight; blend=auto: the weight chosen on the validation sessions
    for the network of `checkpoint` with the prior already set on `model`): make it from the training sessions, set
    it on `model` and store it in `checkpoint`. Returns the choice ({"weight", "scale", "knn", ...}; weight 0 is
    none), or None when no blend is configured. Call it after choose_prior."""
    blend_cfg = cfg.get("blend")
    if blend_cfg is None:
        return None
    if is_blend_search(blend_cfg):
        search: KNNBlendSearch = instantiate(blend_cfg)
        choice = _search_blend(cfg, search, model, datamodule, checkpoint) if trainer.is_global_zero else None
        choice = trainer.strategy.broadcast(choice, src=0)
    else:
        choice = fixed_blend(blend_cfg, blend_cfg.weight, repeat=blend_cfg.get("repeat"))
    if has_blend(choice):
        store = checkpoint if trainer.is_global_zero else None
        apply_blend(choice, model, datamodule.train_sessions, datamodule.n_items, store)
    return choice


def apply_blend(
    choice: dict[str, Any],
    model: SessionRecModule,
    sessions: Sessions | Sequence[Sessions],
    n_items: int,
    checkpoint: str | None,
) -> KNNBlend:
    """The chosen kNN blend made from `sessions` (the model's training data), set on `model` and stored in
    `checkpoint`."""
    repeat = RepeatBonus.from_checkpoint(choice.get("repeat"))
    blend = KNNBlend.fit(sessions, n_items, choice["weight"], choice["knn"], choice["scale"], repeat)
    model.set_blend(blend)
    if checkpoint is not None:
        _store(checkpoint, "blend", blend.to_checkpoint())
    return blend


def _metric_and_network(cfg: DictConfig, model: SessionRecModule, checkpoint: str | None) -> tuple[str, Any]:
    """What prior=auto and blend=auto choose by (the run's monitor when it is a ranking metric, else MRR at the largest
    cutoff) and the network they choose for (`checkpoint`'s, or the one in memory when None)."""
    metric = cfg.monitor if cfg.monitor.startswith(CHOOSABLE) else f"val/mrr@{max(model.ks)}"
    network = model.net if checkpoint is None else load_network(checkpoint, model.device).network
    return metric, network


def _ranking(model: SessionRecModule) -> Ranking:
    """How prior=auto and blend=auto rank their candidates: as the model's own evaluation does."""
    return Ranking(model.ks, model.ties, model.device, model.max_scores)


def _search_blend(
    cfg: DictConfig,
    search: KNNBlendSearch,
    model: SessionRecModule,
    datamodule: SessionDataModule,
    checkpoint: str | None,
) -> dict[str, Any]:
    none = _no_blend(search)
    valid, train = datamodule.valid_sessions, datamodule.train_sessions
    if valid is None or valid.n_targets == 0:
        log.info("blend=auto: no validation sessions to choose the kNN blend's weight on; no blend")
        return none
    if train.times is None:
        log.info("blend=auto: the training data has no click times (the kNN's recency); no kNN blend")
        return none
    metric, network = _metric_and_network(cfg, model, checkpoint)
    scorer = PriorScorer(network, model.prior)
    valid_batches = datamodule.full_dataloader
    chosen = search.choose_all(scorer, train, datamodule.n_items, valid_batches("valid"), metric, _ranking(model))
    without = chosen.knn_table[0][metric]
    choice = _knn_choice(search, metric, *chosen.first, chosen.knn_table, valid.n_targets, "") | {"without": without}
    if not chosen.repeat_table:
        return choice
    k = metric.rsplit("@", 1)[1]
    for row in chosen.repeat_table:
        name = "none" if row["repeat"] is None else f"{row['repeat']['shape']} at {row['repeat']['weight']:g}"
        log.info(
            "blend=auto: repeat bonus %s: val/recall@%s %.4f, val/mrr@%s %.4f",
            name, k, row[f"val/recall@{k}"], k, row[f"val/mrr@{k}"],
        )  # fmt: skip
    rows, bonus = chosen.repeat_table, chosen.repeat
    if bonus is None:
        log.info("blend=auto: no repeat bonus (none beat %s %.4f without one)", metric, rows[0][metric])
        return choice
    log.info(
        "blend=auto: the repeat bonus %s at %g: %s %.4f against %.4f without one%s",
        bonus.shape, bonus.weight, metric, max(row[metric] for row in rows), rows[0][metric],
        "; it lowers the clicked items, so the kNN is chosen again on top of it" if bonus.weight < 0 else "",
    )  # fmt: skip
    if not chosen.knn_table_with_repeat:
        return choice | {"repeat": bonus.to_checkpoint()}
    suffix = f" with the repeat bonus {bonus.shape} at {bonus.weight:g}"
    again = (chosen.weight, chosen.knn, chosen.knn_table_with_repeat)
    return _knn_choice(search, metric, *again, valid.n_targets, suffix) | {
        "without": without,
        "repeat": bonus.to_checkpoint(),
    }


def _no_blend(search: KNNBlendSearch) -> dict[str, Any]:
    """blend=auto's choice of nothing: no kNN (weight 0) and no repeat bonus."""
    return {"weight": 0.0, "scale": search.scale, "knn": search.variants[0], "repeat": None}


def _knn_choice(
    search: KNNBlendSearch,
    metric: str,
    weight: float,
    knn: dict[str, Any],
    table: list[dict[str, Any]],
    n_targets: int,
    suffix: str,
) -> dict[str, Any]:
    """The kNN's part of blend=auto's choice ({"weight", "scale", "knn", "repeat": None}; weight 0: none), logged
    with every candidate's validation metrics in `table` (KNNBlendSearch.choose's)."""
    k = metric.rsplit("@", 1)[1]
    for row in table:
        log.info(
            "blend=auto%s: weight %g%s: val/recall@%s %.4f, val/mrr@%s %.4f",
            suffix, row["weight"], f", kNN {_changed(row['knn'])}" if row["weight"] > 0 else "", k,
            row[f"val/recall@{k}"], k, row[f"val/mrr@{k}"],
        )  # fmt: skip
    without, best = table[0][metric], max(row[metric] for row in table)
    if weight == 0:
        log.info("blend=auto%s: no kNN blend (no weight beat %s %.4f without one)", suffix, metric, without)
        return _no_blend(search)
    log.info(
        "blend=auto%s: the kNN blend at weight %g, kNN %s: %s %.4f against %.4f without one, on %d validation "
        "predictions",
        suffix, weight, _changed(knn), metric, best, without, n_targets,
    )  # fmt: skip
    return {"weight": weight, "scale": search.scale, "knn": knn, "repeat": None}


def _changed(knn: dict[str, Any]) -> str:
    """V-SKNN settings for the log: those that differ from the blend's defaults, or "the blend's defaults"."""
    changed = {key: value for key, value in knn.items() if KNN_SETTINGS.get(key) != value}
    return ", ".join(f"{key}={value}" for key, value in changed.items()) or "the blend's defaults"


def _search(
    cfg: DictConfig,
    search: RecentPopularitySearch,
    model: SessionRecModule,
    datamodule: SessionDataModule,
    checkpoint: str | None,
) -> dict[str, Any]:
    none = {"weight": 0.0, "hours": 0.0}
    valid, train = datamodule.valid_sessions, datamodule.train_sessions
    if valid is None or valid.n_targets == 0:
        log.info("prior=auto: no validation sessions to choose the recent-popularity prior on; no prior")
        return none
    if train.times is None:
        log.info("prior=auto: the training data has no click times; no recent-popularity prior")
        return none
    metric, network = _metric_and_network(cfg, model, checkpoint)
    prior, table = search.choose(
        PriorScorer(network),
        train,
        datamodule.n_items,
        datamodule.full_dataloader("valid"),
        metric,
        _ranking(model),
    )
    k = metric.rsplit("@", 1)[1]
    for row in table:
        log.info(
            "prior=auto: weight %g, hours %g: val/recall@%s %.4f, val/mrr@%s %.4f",
            row["weight"], row["hours"], k, row[f"val/recall@{k}"], k, row[f"val/mrr@{k}"],
        )  # fmt: skip
    without, best = table[0][metric], max(row[metric] for row in table)
    if prior is None:
        log.info("prior=auto: no recent-popularity prior (no candidate beat %s %.4f without one)", metric, without)
        return none | {"without": without}
    log.info(
        "prior=auto: the recent-popularity prior of the last %g hours, weight %g: %s %.4f against %.4f without one, "
        "on %d validation predictions",
        prior.hours, prior.weight, metric, best, without, valid.n_targets,
    )  # fmt: skip
    return {"weight": prior.weight, "hours": prior.hours, "without": without}
