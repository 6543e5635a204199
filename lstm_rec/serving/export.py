"""Export the scoring step (one click in, scores or top k out, LSTM state explicit) to ONNX or TorchScript."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from lstm_rec.checkpoint import load_network
from lstm_rec.model import Carry
from lstm_rec.prior import PriorScorer

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


class ScoringStep(nn.Module):
    """One click of a live session: (item, h, c) -> (scores, h, c), or (top scores, top columns, h, c).

    `item` holds item indices (B,) as in the item table written beside the export (index i is
    item_ids[i - 1]); h and c are (num_layers, B, members * hidden), zeros for a new session. Score column j
    is item index j + 1, so a top column j names item_ids[j]. The item prior of the checkpoint is added.

    A model with repeat scores (repeat_window W > 0) also carries `recent`, (B, W) item indices of the
    session's latest clicks, most recent first, zeros for a new session: (item, h, c, recent) ->
    (scores, h, c, recent) or (top scores, top columns, h, c, recent).
    """

    def __init__(self, scorer: PriorScorer, top_k: int | None = None) -> None:
        super().__init__()
        self.scorer = scorer.eval()
        self.top_k = top_k
        self.window = scorer.scorer.repeat_window

    def forward(self, item: Tensor, h: Tensor, c: Tensor, recent: Tensor | None = None) -> tuple[Tensor, ...]:
        if self.window > 0 and recent is None:
            raise ValueError(f"this model has repeat scores: pass `recent`, the last {self.window} clicks")
        states, carry = self.scorer(item[:, None], Carry(h, c, recent))  # one step
        scores = self.scorer.score(states[:, 0])  # (B, n_items)
        carried = (carry.h, carry.c) if self.window == 0 else (carry.h, carry.c, carry.recent)
        if self.top_k is None:
            return scores, *carried
        top = scores.topk(self.top_k, dim=1)
        return top.values, top.indices, *carried

    def initial_state(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        """Zero (h, c), and zero `recent` when the model has repeat scores."""
        carry = self.scorer.scorer.initial_carry(batch_size)
        return (carry.h, carry.c) if carry.recent is None else (carry.h, carry.c, carry.recent)


def export(
    ckpt_path: str | Path, format: str, output: str | Path, top_k: int | None = None, without_blend: bool = False
) -> Path:
    """Write the scoring step of a checkpoint to `output`, and its item table to `output`.items.json. A checkpoint
    with a kNN blend is refused unless `without_blend`: then the step scores with the network and prior alone."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    model = load_network(ckpt_path)
    if model.blend is not None and not without_blend:
        raise ValueError(
            f"{ckpt_path} holds a kNN blend (blend=...), which scores each session against the training sessions and "
            "has no single-step graph to export; serve it with scripts/serve.py or the Recommender, or pass "
            "without_blend=true to export the network and its prior alone"
        )
    if model.blend is not None:
        log.warning(
            "export: without_blend=true: the exported step scores with the network and its prior alone, without the "
            "checkpoint's kNN blend (weight %g), so its rankings differ from the Recommender's",
            model.blend.weight,
        )
        model.blend = None
    if top_k is not None and not 1 <= top_k <= len(model.item_index):
        raise ValueError(f"top_k must be between 1 and the catalog size {len(model.item_index)}, got {top_k}")
    step = ScoringStep(model.scorer(), top_k)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.tensor([1, 2]), *step.initial_state(2))
    carried = ["h", "c"] + (["recent"] if step.window > 0 else [])
    outputs = (["scores"] if top_k is None else ["top_scores", "top_columns"]) + [f"{name}_out" for name in carried]
    with torch.no_grad():
        if format == "torchscript":
            torch.jit.trace(step, example).save(str(output))
        else:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                step,
                example,
                dynamo=True,
                input_names=["item", *carried],
                output_names=outputs,
                dynamic_shapes=({0: batch}, {1: batch}, {1: batch}, *([{0: batch}] if step.window > 0 else [])),
                verbose=False,
            )
            program.save(str(output))
    ids = model.item_index.ids.tolist()
    table = {"item_ids": ids, "note": "item index i (inputs) is item_ids[i - 1]; score or top column j is item_ids[j]"}
    Path(f"{output}.items.json").write_text(json.dumps(table))
    log.info("exported the %s scoring step of %s to %s", format, ckpt_path, output)
    return output
