"""LightningModule: trains the SessionLSTM with full-softmax cross-entropy and logs ranking metrics."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lstm_rec.checkpoint import CHECKPOINT_KEY, item_index_from_checkpoint, item_index_to_checkpoint
from lstm_rec.data.sessions import ItemIndex, Sessions, recent_item_counts
from lstm_rec.evaluation import rank_batch
from lstm_rec.losses import (
    LOSSES,
    Candidates,
    PopularitySampler,
    bpr_max_loss,
    later_items_loss,
    sampled_candidates,
    sampled_softmax_loss,
)
from lstm_rec.metrics import ranking_metrics
from lstm_rec.model import SessionEnsemble, SessionLSTM

log = logging.getLogger(__name__)


def _member_settings(member: Mapping[str, Any] | None, position: int, common: dict[str, Any]) -> dict[str, Any]:
    """An ensemble member's SessionLSTM settings that differ from the model's, as a plain dict."""
    member = {} if member is None else member
    if not isinstance(member, Mapping):
        raise ValueError(f"model.members[{position}] must be a mapping of settings (or {{}}), got {member!r}")
    unknown = sorted(set(member) - set(common))
    if unknown:
        raise ValueError(f"model.members[{position}] sets {unknown}; a member can set only {sorted(common)}")
    return {str(key): value for key, value in member.items()}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weights."""


class SessionRecModule(L.LightningModule):
    """Next-item LSTM recommender; the item index travels in every checkpoint.

    Args:
        item_index: maps the catalog's item ids to the network's indices.
        optimizer: a partial optimizer (all but the parameters), completed here.
        scheduler: a partial LR scheduler (all but the optimizer), or None.
        scheduler_interval: step the scheduler every "epoch" or every "step" (a schedule that takes
            total_steps, like model/scheduler=warmup_cosine, always steps every optimizer step).
        ks: cutoffs of the logged Recall@k, MRR@k, NDCG@k, coverage@k and popularity bias@k.
        ties: how tied scores rank (see lstm_rec.metrics.target_ranks); the reference protocol is pessimistic.
        max_scores: most item scores held at once during evaluation.
        loss: "cross_entropy" (softmax over all items), "sampled_softmax" (over the batch's targets plus
            `n_negatives` items drawn by popularity ** `sample_alpha`, with `logq` times the logQ correction)
            or "bpr_max" (over the same candidates, with score regularisation `bpreg`).
        later_weight: weight of an auxiliary loss (0: off) that also teaches every position the items its
            session clicks after its next one, a softmax over the same columns as the main loss (see
            lstm_rec.losses.later_items_loss).
        shared_negatives: an ensemble's members score the same sampled candidates (one draw per step) and
            their losses are computed in one pass, which is cheaper than a draw and a loss per member; it
            applies when the members share their batches (data.member_orders=1) and the loss is sampled.
        recent_weight, recent_hours: the recent-popularity prior. When fitting, every item's score gets
            `recent_weight` * log(1 + its clicks in the training sessions that began in the last
            `recent_hours` hours of the training data), at inference only (0: off). Items in fashion at
            the end of training are the likelier next clicks after it; the network, trained over the
            whole period, cannot know which. Kept in the network (`item_prior`), so checkpoints,
            recommenders and exports score with it.
        nonfinite_loss: what a NaN or infinite training loss does. "stop" raises NonFiniteLossError naming
            the first such step; the check costs no host sync per step (it is read every
            `nonfinite_check_every` steps and before any checkpoint is saved). "skip" drops such batches
            without an update; it reads the loss on the host at every step.
        members: null for one SessionLSTM, or a list with one dict per member of a SessionEnsemble, each
            holding the network settings (embedding_dim ... repeat_window) in which that member differs;
            `{}` is a member like the model. Members train side by side, each on its own loss.
        Other arguments are SessionLSTM's.
    """

    def __init__(
        self,
        item_index: ItemIndex,
        embedding_dim: int = 64,
        hidden: int = 100,
        num_layers: int = 1,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        tie_weights: bool = False,
        repeat_window: int = 0,
        members: Sequence[Mapping[str, Any]] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        ks: Sequence[int] = (5, 10, 20),
        ties: str = "pessimistic",
        max_scores: int = 2**24,
        loss: str = "cross_entropy",
        n_negatives: int = 2048,
        sample_alpha: float = 0.5,
        logq: float = 1.0,
        bpreg: float = 1.0,
        later_weight: float = 0.0,
        shared_negatives: bool = False,
        recent_weight: float = 0.0,
        recent_hours: float = 24.0,
        nonfinite_loss: str = "stop",
        nonfinite_check_every: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["item_index", "optimizer", "scheduler"])
        self.hparams.ks = list(ks)  # a plain list keeps checkpoints loadable with weights_only
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if not later_weight >= 0:
            raise ValueError(f"later_weight must be a weight >= 0 (0: off), got {later_weight!r}")
        if not recent_weight >= 0:
            raise ValueError(f"recent_weight must be a weight >= 0 (0: off), got {recent_weight!r}")
        if not recent_hours > 0:
            raise ValueError(f"recent_hours must be a positive number of hours, got {recent_hours!r}")
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}")
        self.item_index = item_index
        common = {
            "embedding_dim": embedding_dim,
            "hidden": hidden,
            "num_layers": num_layers,
            "dropout": dropout,
            "embedding_dropout": embedding_dropout,
            "tie_weights": tie_weights,
            "repeat_window": repeat_window,
        }
        if members:
            members = [_member_settings(member, position, common) for position, member in enumerate(members)]
            self.hparams.members = members  # plain dicts keep checkpoints loadable with weights_only
            self.net: SessionLSTM | SessionEnsemble = SessionEnsemble(len(item_index), members, common)
        else:
            self.net = SessionLSTM(len(item_index), **common)
        self.train_seconds = 0.0  # wall time spent in training epochs, kept in checkpoints
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.scheduler_factory = scheduler
        counts = torch.from_numpy(item_index.counts)
        self.sampler = PopularitySampler(counts, sample_alpha)
        self.val_metrics = ranking_metrics(self.hparams.ks, "val/", counts)
        self.test_metrics = ranking_metrics(self.hparams.ks, "test/", counts)
        # (global step, epoch, batch) of the first non-finite loss, -1 while there is none; on the device.
        self.register_buffer("first_nonfinite", torch.full((3,), -1, dtype=torch.long), persistent=False)
        self.skipped_batches = 0

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.recent_weight > 0:
            sessions = getattr(self.trainer.datamodule, "train_sessions", None)
            if sessions is None or sessions.times is None:
                raise ValueError(
                    "model.recent_weight > 0 (the recent-popularity prior) needs the training sessions with their "
                    "click times, from one of lstm_rec's data modules; set model.recent_weight=0 otherwise"
                )
            self.set_recent_prior(sessions)

    def set_recent_prior(self, sessions: Sessions) -> None:
        """Fill the network's item prior from the clicks of `sessions` in their last `recent_hours` hours."""
        hours = self.hparams.recent_hours
        counts, n_sessions = recent_item_counts(sessions, len(self.item_index), hours * 3600.0)
        self.net.set_recent_prior(counts, self.hparams.recent_weight)
        log.info(
            "recent-popularity prior: %d clicks on %d items in the %d training sessions of the last %g hours, "
            "weight %g",
            counts.sum(),
            np.count_nonzero(counts),
            n_sessions,
            hours,
            self.hparams.recent_weight,
        )

    def training_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        # An ensemble's members each learn as if alone: the sum of their losses, each with its own gradient,
        # on a batch of their own when the data module draws one per member (data.member_orders).
        members = self.net.members if isinstance(self.net, SessionEnsemble) else [self.net]
        batches = list(batch) if isinstance(batch, (tuple, list)) else [batch] * len(members)
        if len(batches) != len(members):
            raise ValueError(
                f"the data module drew {len(batches)} batches per step for {len(members)} model members; "
                f"set data.member_orders to {len(members)} (or 1)"
            )
        shared = self.hparams.shared_negatives and self.hparams.loss != "cross_entropy"
        if shared and len(members) > 1 and not isinstance(batch, (tuple, list)):
            loss = len(members) * self._sampled_members_loss(members, self.net, batch)
        else:
            loss = sum(self._member_loss(member, batch) for member, batch in zip(members, batches, strict=True))
        if self.hparams.nonfinite_loss == "skip" and not torch.isfinite(loss):
            self.skipped_batches += 1
            message = self._nonfinite_message(batch_idx)
            log.warning("%s; skipping this batch (%d skipped so far)", message, self.skipped_batches)
            return None  # Lightning then runs no backward pass and no optimizer step
        self._watch_loss(loss.detach(), batch_idx)
        self.log(
            "train/loss",
            loss.detach() / len(members),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batches[0]),
        )
        return loss

    def _nonfinite_message(self, batch_idx: int) -> str:
        return f"training loss is not finite at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"

    def _watch_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Record the first non-finite loss on the device, without waiting for it."""
        here = torch.tensor([self.global_step, self.current_epoch, batch_idx])
        if self.device.type == "cuda":
            here = here.pin_memory()  # a copy from pageable memory may wait for the device
        here = here.to(self.device, non_blocking=True)
        first = (~torch.isfinite(loss)) & (self.first_nonfinite[0] < 0)
        self.first_nonfinite = torch.where(first, here, self.first_nonfinite)

    def _stop_if_nonfinite(self) -> None:
        step, epoch, batch = self.first_nonfinite.tolist()  # one host sync, at the check points only
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss is not finite (NaN or inf) at step {step} (epoch {epoch}, batch {batch}); "
                "stopped before saving a checkpoint with those weights. Lower model.optimizer.lr, keep "
                "trainer.gradient_clip_val, or set model.nonfinite_loss=skip to skip such batches"
            )

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        if (self.global_step + 1) % self.hparams.nonfinite_check_every == 0:
            self._stop_if_nonfinite()

    def _member_loss(self, net: SessionLSTM, batch: Tensor) -> Tensor:
        if self.hparams.loss != "cross_entropy":
            return self._sampled_members_loss([net], net, batch)
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T - 1) each
        history = net.history(inputs) if net.repeat_window > 0 else None  # (B, T - 1, W)
        logits = net.score(net(inputs), history, prior=False)  # (B, T - 1, n_items)
        # Score column j is item j + 1, so padding (0) becomes -1 and is ignored.
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten() - 1, ignore_index=-1)
        if self.hparams.later_weight > 0:
            is_target = targets > 0
            log_probs = torch.log_softmax(self._rows(logits, is_target), dim=-1)
            later = later_items_loss(log_probs, self._rows(targets, is_target) - 1, is_target, dense=self._dense)
            loss = loss + self.hparams.later_weight * later
        return loss

    def _sampled_members_loss(self, members: Sequence[SessionLSTM], source: nn.Module, batch: Tensor) -> Tensor:
        """The mean sampled loss of `members` on one batch, all scoring the same candidates (one draw, one loss
        computation); `source` (the member itself, or the ensemble) gives the prefixes' history."""
        inputs, targets = batch[:, :-1], batch[:, 1:]
        is_target = targets > 0
        states = [self._rows(m(inputs), is_target) for m in members]  # each (N, H)
        history = self._rows(source.history(inputs), is_target) if source.repeat_window > 0 else None  # (N, W)
        candidates = self._candidates(targets, is_target)
        distinct = not self._dense
        pairs = zip(members, states, strict=True)
        scores = torch.stack([m.score_columns(s, candidates.columns, history, distinct) for m, s in pairs])  # (M, N, C)
        return self._sampled_loss(scores, candidates, is_target)

    @property
    def _dense(self) -> bool:
        """Whether the sampled losses take every position of the padded batch as a row, padding masked out.

        On the CPU they take only the true targets, and one column per distinct item. Elsewhere both would
        make the host wait for the device every step (boolean indexing and torch.unique have data-dependent
        sizes), so every position is a row and every proposal a column, which gives the same loss.
        """
        return self.device.type != "cpu"

    def _rows(self, values: Tensor, is_target: Tensor) -> Tensor:
        """The loss rows of (B, T, ...) `values`: (N, ...), the true targets (is_target), or all B * T if dense."""
        return values.flatten(0, 1) if self._dense else values[is_target]

    def _candidates(self, targets: Tensor, is_target: Tensor) -> Candidates:
        """The loss rows' target columns plus n_negatives popularity draws, from (B, T) targets."""
        columns = self._rows(targets, is_target) - 1  # padding rows (dense only) get -1
        real = is_target.flatten() if self._dense else None
        return sampled_candidates(columns, self.sampler, self.hparams.n_negatives, not self._dense, real)

    def _sampled_loss(self, scores: Tensor, candidates: Candidates, is_target: Tensor) -> Tensor:
        """The configured sampled loss of `scores` (N, C) or (M, N, C) over `candidates`, plus the later-items
        loss when it is on; rows are the True positions of `is_target` (B, T)."""
        if self.hparams.loss == "sampled_softmax":
            loss = sampled_softmax_loss(scores, candidates, self.hparams.logq)
        else:
            loss = bpr_max_loss(scores, candidates, self.hparams.bpreg)
        if self.hparams.later_weight > 0:
            log_counts = candidates.log_weights(torch.zeros_like(candidates.log_q))  # 0 without repeats
            log_probs = torch.log_softmax(scores + log_counts, dim=-1)
            positives = candidates.positives(scores.shape[-2])
            columns = candidates.columns if self._dense else None
            later = later_items_loss(log_probs, positives, is_target, columns, self._dense)
            loss = loss + self.hparams.later_weight * later
        return loss

    def _evaluation_step(self, batch: Tensor, metrics: MetricCollection) -> None:
        # Full-precision scores: bf16 would tie many items and push targets down under pessimistic ranks.
        with torch.autocast(self.device.type, enabled=False):
            ranked = rank_batch(self.net, batch, max(self.hparams.ks), self.hparams.ties, self.hparams.max_scores)
        metrics.update(ranked.ranks, ranked.top_items)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(batch))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_metrics)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        # A schedule that takes total_steps is stepped every optimizer step, over the run's own length.
        per_step = "total_steps" in inspect.signature(self.scheduler_factory).parameters
        length = {"total_steps": int(self.trainer.estimated_stepping_batches)} if per_step else {}
        scheduler = self.scheduler_factory(optimizer=optimizer, **length)
        interval = "step" if per_step else self.hparams.scheduler_interval
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer (model/optimizer/adagrad.yaml),
        # since one that unscales a float16 loss scaler's gradients itself would see them clipped while scaled.
        # Under bf16 there is no scaler, so the gradients are clipped here as they are.
        plugin = self.trainer.precision_plugin
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if gradient_clip_val and fused and getattr(plugin, "precision", None) == "bf16-mixed":
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_epoch_start(self) -> None:
        self._epoch_start: float | None = time.perf_counter()

    def _stop_training_clock(self) -> None:
        if getattr(self, "_epoch_start", None) is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_validation_epoch_start(self) -> None:
        # Validation, then checkpointing, close a training epoch: count its time before it is saved.
        self._stop_training_clock()
        self._stop_if_nonfinite()

    def on_train_epoch_end(self) -> None:
        self._stop_training_clock()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_nonfinite()
        broken = [name for name, weights in self.named_parameters() if not weights.isfinite().all()]
        if broken:
            raise NonFiniteLossError(f"refusing to save a checkpoint with non-finite weights in {broken}")
        item_index_to_checkpoint(self.item_index, checkpoint)
        checkpoint[CHECKPOINT_KEY]["train_seconds"] = self.train_seconds

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_seconds = checkpoint.get(CHECKPOINT_KEY, {}).get("train_seconds", 0.0)
        saved = item_index_from_checkpoint(checkpoint, source="the checkpoint being loaded")
        if saved != self.item_index:
            raise ValueError(
                f"the checkpoint's item index ({len(saved)} items) differs from this run's training data "
                f"({len(self.item_index)} items); resume with the data the checkpoint was trained on"
            )
