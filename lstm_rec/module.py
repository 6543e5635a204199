"""LightningModule: trains the SessionLSTM with its loss, logs ranking metrics, keeps the item index in checkpoints."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from lstm_rec.blend import BlendScorer, KNNBlend
from lstm_rec.checkpoint import CheckpointError, item_index_of, read_entry, write_entry
from lstm_rec.checkpoint_checks import check_training_state, check_weights
from lstm_rec.data.batching import ParallelStep
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.evaluation import rank_batch
from lstm_rec.losses import CrossEntropy
from lstm_rec.metrics import ranking_metrics
from lstm_rec.model import Carry, PrefixStates, build_network
from lstm_rec.prior import ItemPrior, PriorScorer

log = logging.getLogger(__name__)

# The seed of a sampled loss's draws on validation batch 0 (batch i: this + i): every validation draws the same
# candidates, so that val/loss moves only with the weights.
VALIDATION_SEED = 0


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or weights."""


class SessionRecModule(L.LightningModule):
    """Next-item recommender: the network, its loss and optimizer, and how it is evaluated.

    Args:
        item_index: maps the catalog's item ids to the network's indices.
        loss: a loss object of lstm_rec.losses (the model/loss config group); default full-softmax cross-entropy.
        optimizer: a partial optimizer (all but the parameters), completed here.
        scheduler: a partial LR scheduler (all but the optimizer), or None; one that takes `total_steps`
            (model/scheduler=warmup_cosine) steps every optimizer step over the run's own length.
        scheduler_interval: step any other scheduler every "epoch" or every "step".
        ks: cutoffs of the logged Recall@k, MRR@k, NDCG@k, coverage@k and popularity bias@k.
        ties: how tied scores rank (see lstm_rec.metrics.target_ranks); the reference protocol is pessimistic.
        max_scores: most item scores held at once during evaluation.
        nonfinite_loss: "stop" raises NonFiniteLossError naming the first step with a NaN or infinite loss
            (read every `nonfinite_check_every` steps and before any checkpoint: no host sync per step);
            "skip" drops such batches without an update (it reads the loss at every step).
        prior: an item prior added to the scores at evaluation (see lstm_rec.prior), stored in checkpoints.
        loss_batch_size: sessions per batch of val/loss, the training's batch size (None: a whole validation
            batch).
        sparse_item_grad: true: the item table's gradient holds only the rows a batch looked up, and Adagrad
            updates those rows alone (the same update as the dense one, whose other rows it leaves unchanged);
            false: dense; auto: true where it applies and pays (see `sparse_rows_blockers`), else false.
        network: the network's settings, SessionLSTM's arguments (model.hidden, model.members, ...).
    """

    def __init__(
        self,
        item_index: ItemIndex,
        loss: nn.Module | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        ks: Sequence[int] = (5, 10, 20),
        ties: str = "pessimistic",
        max_scores: int = 2**24,
        nonfinite_loss: str = "stop",
        nonfinite_check_every: int = 50,
        prior: ItemPrior | None = None,
        loss_batch_size: int | None = None,
        sparse_item_grad: bool | str = "auto",
        **network: Any,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}")
        self.item_index = item_index
        self.ks, self.ties, self.max_scores = list(ks), ties, max_scores
        self.nonfinite_loss, self.nonfinite_check_every = nonfinite_loss, nonfinite_check_every
        self.scheduler_interval = scheduler_interval
        self.loss_batch_size = loss_batch_size
        if sparse_item_grad not in (True, False, "auto"):
            raise ValueError(f"sparse_item_grad must be true, false or auto, got {sparse_item_grad!r}")
        self.sparse_item_grad = sparse_item_grad
        self.network_settings = _plain(network)
        self.net = build_network(len(item_index), self.network_settings)
        self.loss = loss if loss is not None else CrossEntropy()
        self.loss.set_item_counts(item_index.counts)
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.scheduler_factory = scheduler
        # The lanes' states between session-parallel steps (data.batching=parallel).
        self._lanes: Carry | None = None
        # What test_step ranks with, made by on_test_start.
        self._test_scorer: Any = None
        # A checkpoint's optimizer state that training starts from (init_from with init_optimizer=carry).
        self.carried_optimizer_state: dict[str, Any] | None = None
        self.register_buffer("prior_scores", None if prior is None else prior.scores, persistent=False)
        self.prior_settings = None if prior is None else {"weight": prior.weight, "hours": prior.hours}
        self.blend: KNNBlend | None = None  # the kNN blend, set after training (blend=...; lstm_rec.blend)
        counts = torch.from_numpy(item_index.counts)
        self.val_metrics = ranking_metrics(self.ks, "val/", counts)
        self.test_metrics = ranking_metrics(self.ks, "test/", counts)
        # val/loss per prediction. Lightning's own weighted mean would average the processes' prediction counts as
        # integers (truncated). A NaN loss stays NaN (torchmetrics 1.9 drops the weights under "disable").
        self.val_loss_mean = MeanMetric(nan_strategy=float("nan"))
        # (global step, epoch, batch) of the first non-finite loss, -1 while there is none; on the device.
        self.register_buffer("first_nonfinite", torch.full((3,), -1, dtype=torch.long), persistent=False)
        self.skipped_batches = 0
        self._epoch_rows = 0  # see _log_training_loss
        self.train_seconds = 0.0  # wall time spent in training epochs, kept in checkpoints

    @property
    def prior(self) -> ItemPrior | None:
        if self.prior_scores is None:
            return None
        return ItemPrior(self.prior_scores, **self.prior_settings)

    def set_prior(self, prior: ItemPrior | None) -> None:
        """Replace the item prior (None: none); checkpoints saved from now on carry it."""
        if prior is not None and prior.scores.shape != (len(self.item_index),):
            raise ValueError(
                f"the prior needs one score per item ({len(self.item_index)}), got {tuple(prior.scores.shape)}"
            )
        device = next(self.net.parameters()).device
        self.prior_scores = None if prior is None else prior.scores.to(device)
        self.prior_settings = None if prior is None else {"weight": prior.weight, "hours": prior.hours}

    def set_blend(self, blend: KNNBlend | None) -> None:
        """Replace the kNN blend (None: none); checkpoints saved from now on carry it."""
        if blend is not None and blend.n_items != len(self.item_index):
            raise ValueError(f"the kNN blend needs {len(self.item_index)} items, got {blend.n_items}")
        self.blend = blend

    def scorer(self) -> PriorScorer:
        """The network with the kNN blend and the item prior added to its scores: what evaluation ranks with."""
        return PriorScorer(self.net if self.blend is None else BlendScorer(self.net, self.blend), self.prior)

    def on_fit_start(self) -> None:
        if hasattr(self.loss, "resolve_layout"):  # the sampled losses' layout follows the device (see there)
            self.loss.resolve_layout(self.device)

    @property
    def automatic_optimization(self) -> bool:
        """Lightning's optimizer step, one a batch; off when the datamodule hands over batches of several
        session-parallel steps (data.steps_per_batch), which training_step steps through one by one itself."""
        return self._automatic_optimization and self.steps_per_batch() == 1

    @automatic_optimization.setter
    def automatic_optimization(self, automatic: bool) -> None:
        self._automatic_optimization = automatic

    def steps_per_batch(self) -> int:
        """The session-parallel steps of a training batch, as the trainer's datamodule decided (1 without one)."""
        trainer = self._trainer
        decide = getattr(getattr(trainer, "datamodule", None), "parallel_steps_per_batch", None)
        return 1 if decide is None else decide()

    def training_step(self, batch: Tensor | ParallelStep | list[ParallelStep], batch_idx: int) -> Tensor | None:
        if isinstance(batch, list):  # several session-parallel steps, each its own optimizer step
            self._train_steps(batch, batch_idx)
            return None
        parallel = isinstance(batch, ParallelStep)
        if parallel:
            loss, size = self._parallel_step_loss(batch), len(batch.targets)
        else:
            inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T - 1) each
            # The sum of the members' losses, so that each member learns as if alone.
            loss, size = self.loss(self.net, self.net.encode(inputs), targets), len(batch)
        if self.nonfinite_loss == "skip" and not torch.isfinite(loss):
            self._skip(batch if parallel else None, batch_idx)
            return None  # Lightning then runs no backward pass and no optimizer step
        self._watch_loss(loss.detach(), batch_idx)
        if self._trainer is not None:  # not a step run by hand
            trainer, step = self.trainer, self.global_step + 1  # the optimizer steps after this batch
            last = batch_idx + 1 >= trainer.num_training_batches or 0 < trainer.max_steps <= step
            self._log_training_loss(loss.detach() / self.net.n_members, size, step, last)
        return loss

    def _skip(self, step: ParallelStep | None, batch_idx: int) -> None:
        self.skipped_batches += 1
        if step is not None:  # the skipped step's lanes carry no non-finite state on
            self._lanes.h[:, step.slots], self._lanes.c[:, step.slots] = 0.0, 0.0
        log.warning("%s; skipping this batch (%d skipped so far)", self._nonfinite_message(batch_idx),
                    self.skipped_batches)  # fmt: skip

    def _train_steps(self, steps: list[ParallelStep], batch_idx: int) -> None:
        """A batch of session-parallel steps under manual optimization: each step as Lightning's automatic
        optimization takes a batch of one (the gradients zeroed, the loss's backward pass, the optimizer's step, then
        the schedulers stepped every step), with the same random draws in the same order; only Lightning's own work
        per batch (hooks, loops, logging) comes once per batch of steps rather than once per step."""
        trainer, optimizer = self.trainer, self.optimizers()
        per_step = [config for config in trainer.lr_scheduler_configs if config.interval == "step"]
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        for done, step in enumerate(steps, start=1):
            if 0 < trainer.max_steps <= self.global_step:
                done -= 1
                break
            loss = self._parallel_step_loss(step)
            if self.nonfinite_loss == "skip" and not torch.isfinite(loss):
                self._skip(step, batch_idx)
                continue
            self._watch_loss(loss.detach(), batch_idx)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            for config in per_step:
                if self.global_step % config.frequency == 0:
                    config.scheduler.step()
            last = (last_batch and done == len(steps)) or 0 < trainer.max_steps <= self.global_step
            self._log_training_loss(loss.detach() / self.net.n_members, len(step.targets), self.global_step, last,
                                    direct=True)  # fmt: skip
            if self.global_step % self.nonfinite_check_every == 0:
                self._stop_if_nonfinite()
        # Lightning counts its logging steps by batches (one more after this one): it logs at the optimizer steps, as
        # a batch of one step would.
        if done > 1 and hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped"):
            trainer.fit_loop.epoch_loop._batches_that_stepped += done - 1

    def _log_training_loss(self, batch_loss: Tensor, size: int, step: int, last: bool, direct: bool = False) -> None:
        """train/loss_step and train/loss_epoch (the mean over the epoch's predictions) after optimizer step `step`,
        handed to Lightning only at the steps its logger writes and at the epoch's or the run's `last` step: self.log
        every step cost 0.4 ms of a 9 ms step. The epoch's sum is kept here on the device; each hand-over carries the
        rows since the last one as its weight, so Lightning's weighted epoch mean is the mean over every step.
        `direct`: a step within a batch of several, whose train/loss_step goes to the loggers from here, at the step
        Lightning gives a batch of one (its logger writes once a batch), and to the progress bar through Lightning."""
        if self._epoch_rows == 0:
            self._epoch_loss = torch.zeros((), device=batch_loss.device)
        self._epoch_loss.add_(batch_loss * size)
        self._epoch_rows += size
        trainer = self.trainer
        if last or step % max(trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss_step", batch_loss, on_step=True, on_epoch=False, prog_bar=True, logger=not direct)
            if direct and step % max(trainer.log_every_n_steps, 1) == 0:
                for logger in self.loggers:
                    logger.log_metrics({"train/loss_step": batch_loss.item()}, step=step - 1)
            chunk, rows = self._epoch_loss / self._epoch_rows, self._epoch_rows
            self.log("train/loss_epoch", chunk, on_step=False, on_epoch=True, prog_bar=True, batch_size=rows)
            self._epoch_rows = 0

    def _parallel_step_loss(self, step: ParallelStep) -> Tensor:
        """The loss of one session-parallel step (data.batching=parallel): each lane's state goes on from its
        previous step (zero where a new session starts), reads one click and predicts the next; the new states are
        kept, detached, for the lanes' next step, so the gradient reaches back one click."""
        if self._lanes is None:  # an epoch's first step holds every lane once (ParallelStepSampler)
            self._lanes = self.net.initial_carry(len(step.slots), step.inputs.device)
        carried, keep = self._lanes, (~step.reset)[None, :, None]
        recent = None if carried.recent is None else carried.recent[step.slots] * keep[0]
        carry = Carry(carried.h[:, step.slots] * keep, carried.c[:, step.slots] * keep, recent)
        states, after = self.net(step.inputs[:, None], carry)  # states (M, n, 1, H)
        loss = self.loss(self.net, states, step.targets[:, None])
        carried.h[:, step.slots], carried.c[:, step.slots] = after.h.detach(), after.c.detach()
        if carried.recent is not None:
            carried.recent[step.slots] = after.recent
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
        if not isinstance(batch, list) and (self.global_step + 1) % self.nonfinite_check_every == 0:
            self._stop_if_nonfinite()  # a batch of several steps checked within (_train_steps)

    def _evaluation_step(self, batch: Tensor, metrics: MetricCollection, scorer: Any = None) -> None:
        # Full-precision scores: bf16 would tie many items and push targets down under pessimistic ranks.
        with torch.autocast(self.device.type, enabled=False):
            scorer = self.scorer() if scorer is None else scorer
            ranked = rank_batch(scorer, batch, max(self.ks), self.ties, self.max_scores)
        metrics.update(ranked.ranks, ranked.top_items)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(batch))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_metrics)
        loss_sum, n_predictions = self.prediction_loss(batch, batch_idx)
        if n_predictions:  # weighted by predictions (summed over processes): the epoch's mean per prediction
            self.val_loss_mean.update(loss_sum / n_predictions, weight=n_predictions)
            self.log("val/loss", self.val_loss_mean, on_step=False, on_epoch=True, prog_bar=True)

    def prediction_loss(self, batch: Tensor, batch_idx: int) -> tuple[Tensor, int]:
        """The training loss (the members' mean) summed over a batch's predictions, and their number.

        The batch is cut into batches of `loss_batch_size` sessions, so that a sampled loss shares its candidates
        among about as many targets as in training. It draws them from torch's stream seeded with
        VALIDATION_SEED + `batch_idx` and restored afterwards: every evaluation of a batch draws the same ones, and
        the training's random stream goes on as if nothing was drawn.
        """
        total, count = torch.zeros((), device=batch.device), 0
        with self._forked_rng():
            torch.manual_seed(VALIDATION_SEED + batch_idx)
            for sessions in batch.split(self.loss_batch_size or len(batch)):
                loss_sum, n_predictions = self._loss_sum(sessions)
                total, count = total + loss_sum, count + n_predictions
        return total, count

    def _loss_sum(self, sessions: Tensor) -> tuple[Tensor, int]:
        """The loss summed over the predictions of `sessions` (B, T), scored `max_scores` scores at a time."""
        inputs, targets = sessions[:, :-1], sessions[:, 1:]  # (B, T - 1) each
        is_target = targets > 0
        states = self.net.encode(inputs)[is_target]  # (M, N, H): one row per prediction
        recent = None if states.recent is None else states.recent[None]
        states = PrefixStates(states.hidden[:, None], recent)  # (M, 1, N, H): the predictions as one row
        targets = targets[is_target][None]  # (1, N)
        members = self.net.n_members
        chunk = max(1, self.max_scores // (self.net.n_items * members))
        total = torch.zeros((), device=sessions.device)
        for begin in range(0, targets.shape[1], chunk):
            part = targets[:, begin : begin + chunk]
            total = total + self.loss(self.net, states[:, begin : begin + chunk], part) * (part.shape[1] / members)
        return total, targets.shape[1]

    def _forked_rng(self) -> Any:
        """A context that restores torch's random state of the CPU and of this module's device on leaving."""
        if self.device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        return torch.random.fork_rng(devices=[self.device], device_type=self.device.type)

    @torch.no_grad()
    def validation_loss(self, batches: Iterable[Tensor]) -> float:
        """The training loss per prediction over `batches` with dropout off, drawn as in validation (val/loss)."""
        was_training, total, count = self.training, 0.0, 0
        self.eval()
        try:
            for batch_idx, batch in enumerate(batches):
                loss_sum, n_predictions = self.prediction_loss(batch.to(self.device), batch_idx)
                total, count = total + float(loss_sum), count + n_predictions
        finally:
            self.train(was_training)
        return total / count if count else float("nan")

    def on_test_start(self) -> None:
        # The test sessions may index more items than the network knows: all of data.train's when validation split
        # off it held more (SessionDataModule.test_catalog, test_scorer). Coverage and popularity bias count over
        # those items, as scripts/evaluate.py counts them. Made once per test, after the tested weights are loaded.
        datamodule = getattr(self._trainer, "datamodule", None)
        catalog = getattr(datamodule, "test_catalog", None)
        counts = (self.item_index if catalog is None else catalog).counts
        self.test_metrics = ranking_metrics(self.ks, "test/", torch.from_numpy(counts)).to(self.device)
        scorer = self.scorer()
        self._test_scorer = scorer if catalog is None else datamodule.test_scorer(scorer).to(self.device)

    def on_test_end(self) -> None:
        self._test_scorer = None

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metrics, self._test_scorer)

    def sparse_rows_blockers(self) -> list[str]:
        """Why the item table cannot (or, under auto, should not) take sparse gradients here; [] when it can."""
        factory = self.optimizer_factory
        settings = getattr(factory, "keywords", {})
        trainer = self._trainer
        blockers = []
        optimizer_class = getattr(factory, "func", factory)
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Adagrad)):
            blockers.append("the optimizer is not Adagrad (model/optimizer=adagrad)")
        if settings.get("weight_decay", 0):
            blockers.append("Adagrad's weight_decay is not 0")
        if isinstance(self.loss, CrossEntropy):
            blockers.append("the full-softmax loss scores every item, so every row gets a gradient")
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            blockers.append("training runs in several processes")
        precision = getattr(getattr(trainer, "precision_plugin", None), "precision", "32-true")
        if precision not in ("32-true", "32", "bf16-mixed"):
            blockers.append(f"trainer.precision={precision} (a float16 loss scaler takes dense gradients)")
        if self.device.type != "cpu":
            blockers.append("not on the CPU (the fused dense update is fast on accelerators)")
        return blockers

    def _use_sparse_rows(self) -> bool:
        blockers = self.sparse_rows_blockers()
        if self.sparse_item_grad is True and blockers:
            raise ValueError(f"model.sparse_item_grad=true cannot apply: {'; '.join(blockers)}")
        use = self.sparse_item_grad is True or (self.sparse_item_grad == "auto" and not blockers)
        if self.sparse_item_grad == "auto":
            log.info(
                "model.sparse_item_grad=auto: %s",
                "sparse (only the item rows a batch looks up are updated)" if use else "dense: " + "; ".join(blockers),
            )
        return use

    def configure_optimizers(self) -> dict[str, Any]:
        self.net.sparse_item_grad = self._use_sparse_rows()
        # The fused Adagrad takes no sparse gradient; the per-tensor one updates the looked-up rows alone.
        fused = {"fused": False} if self.net.sparse_item_grad else {}
        if self.net.sparse_item_grad:  # Adagrad's sparse update warns unless the (default) choice is explicit
            torch.sparse.check_sparse_tensor_invariants.disable()
        optimizer = self.optimizer_factory(params=self.parameters(), **fused)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        per_step = "total_steps" in inspect.signature(self.scheduler_factory).parameters
        length = {"total_steps": self.total_steps()} if per_step else {}
        scheduler = self.scheduler_factory(optimizer=optimizer, **length)
        interval = "step" if per_step else self.scheduler_interval
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def total_steps(self) -> int:
        """The run's optimizer steps as Lightning estimates them (its first epoch's batches times the epochs, at most
        trainer.max_steps), counted in steps where a batch holds several (data.steps_per_batch)."""
        trainer = self.trainer
        estimated = trainer.estimated_stepping_batches  # makes the training loader when there is none yet
        if self.steps_per_batch() == 1 or trainer.max_epochs == -1:
            return int(estimated)
        total = self.steps_per_epoch() * max(trainer.max_epochs, 1)
        return total if trainer.max_steps == -1 else min(total, trainer.max_steps)

    def steps_per_epoch(self) -> int:
        """A training epoch's optimizer steps, counted in steps where a batch holds several (data.steps_per_batch)."""
        trainer = self.trainer
        _ = trainer.estimated_stepping_batches  # makes the training loader when there is none yet
        k = self.steps_per_batch()
        if k == 1:
            return -(-int(trainer.num_training_batches) // trainer.accumulate_grad_batches)
        return min(trainer.train_dataloader.sampler.n_steps, int(trainer.num_training_batches) * k)

    def on_train_start(self) -> None:
        # A resumed optimizer takes its settings from the checkpoint, "fused" among them: a checkpoint written with
        # the other kind of item-table update must not switch this run's update back.
        for optimizer in self.trainer.optimizers:
            match_fused_setting(optimizer, sparse=self.net.sparse_item_grad)
        if self.carried_optimizer_state is not None:  # init_from with init_optimizer=carry (lstm_rec/jobs/init_from.py)
            from lstm_rec.jobs.init_from import carry_optimizer_state

            (optimizer,) = self.trainer.optimizers
            carry_optimizer_state(optimizer, self.carried_optimizer_state)
            self.carried_optimizer_state = None
        self._check_step_counter()

    def _check_step_counter(self) -> None:
        """Lightning counts optimizer steps in one place under its automatic optimization and in another under manual
        optimization (several steps a batch): a run resumed in the other mode would count from 0 (its logging steps,
        trainer.max_steps). Refused, naming the setting that resumes it."""
        loop = self.trainer.fit_loop.epoch_loop
        try:
            automatic = loop.automatic_optimization.optim_progress.optimizer_steps
            manual = loop.manual_optimization.optim_step_progress.total.completed
        except AttributeError:  # another Lightning: nothing to compare
            return
        counted, other = (automatic, manual) if self.automatic_optimization else (manual, automatic)
        if counted == 0 and other > 0:
            k = self.steps_per_batch()
            raise ValueError(
                f"this run resumes a checkpoint trained with {'several steps' if k == 1 else 'one step'} a batch "
                f"({other} steps) and now takes {k}: resume it with the data.steps_per_batch it was trained with "
                f"({'1' if k > 1 else 'more than 1'}), or start a new run from its weights with init_from=PATH"
            )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer (model/optimizer/adagrad.yaml),
        # since one that unscales a float16 loss scaler's gradients itself would see them clipped while scaled.
        # Under bf16 there is no scaler, so the gradients are clipped here as they are.
        if gradient_clip_val and self.net.sparse_item_grad:
            clip_sparse_gradients(self.parameters(), gradient_clip_val, gradient_clip_algorithm or "norm")
            return
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        bf16 = getattr(self.trainer.precision_plugin, "precision", None) == "bf16-mixed"
        if gradient_clip_val and fused and bf16:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_epoch_start(self) -> None:
        self._epoch_rows = 0  # train/loss_epoch's predictions so far (_log_training_loss)
        self._epoch_start: float | None = time.perf_counter()
        self._lanes = None  # session-parallel lanes start every epoch empty

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
        if not self.automatic_optimization:  # Lightning steps no scheduler under manual optimization
            for config in self.trainer.lr_scheduler_configs:
                if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                    config.scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._stop_if_nonfinite()
        broken = [name for name, weights in self.named_parameters() if not weights.isfinite().all()]
        if broken:
            raise NonFiniteLossError(f"refusing to save a checkpoint with non-finite weights in {broken}")
        write_entry(checkpoint, self.item_index, self.network_settings, self.prior, self.train_seconds, self.blend)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = getattr(self._trainer, "ckpt_path", None)
        source = "the checkpoint being loaded" if path is None else f"ckpt_path '{path}'"
        entry = read_entry(checkpoint, source)
        if entry.get("upgraded_from") is not None:
            raise CheckpointError(
                f"{source} has format version {entry['upgraded_from']}: scripts/evaluate.py, "
                "scripts/recommend.py, export and the Recommender read it, but training cannot resume from it"
            )
        self.train_seconds = entry.get("train_seconds", 0.0)
        if item_index_of(entry) != self.item_index:
            raise CheckpointError(
                f"{source}: its item index ({len(entry['item_counts'])} items) differs from this run's training "
                f"data ({len(self.item_index)} items); resume with the data the checkpoint was trained on"
            )
        shapes = ((name, tuple(weights.shape)) for name, weights in self.net.state_dict().items())
        check_weights(checkpoint.get("state_dict"), shapes, source, needed_by="this run's model settings")
        if self._trainer is not None and self._trainer.state.fn == "fit":
            check_training_state(checkpoint, source, resuming=True)


def match_fused_setting(optimizer: torch.optim.Optimizer, sparse: bool) -> None:
    """Sparse gradients need the per-tensor update: turn off a fused setting that a loaded state brought back."""
    if sparse:
        for group in optimizer.param_groups:
            if group.get("fused"):
                group["fused"] = False


def clip_sparse_gradients(parameters: Iterable[nn.Parameter], clip_val: float, algorithm: str) -> None:
    """torch.nn.utils.clip_grad_norm_ / clip_grad_value_ for gradients of which some are sparse (coalesced here,
    so that repeated rows count once, summed, as in the dense gradient)."""
    grads = []
    for parameter in parameters:
        if parameter.grad is not None:
            if parameter.grad.is_sparse:
                parameter.grad = parameter.grad.coalesce()
            grads.append(parameter.grad)
    values = [grad.values() if grad.is_sparse else grad for grad in grads]
    if algorithm == "value":
        for value in values:
            value.clamp_(-clip_val, clip_val)
        return
    if algorithm != "norm":
        raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {algorithm!r}")
    if not values:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in values]))
    coefficient = (clip_val / (total + 1e-6)).clamp(max=1.0)
    for value in values:
        value.mul_(coefficient)


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """Network settings as plain Python values (Hydra passes lists of mappings as its own containers)."""
    members = settings.get("members")
    if members is not None:
        settings = settings | {"members": [dict(member or {}) for member in members]}
    return dict(settings)
