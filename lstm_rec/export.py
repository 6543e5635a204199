"""Export the scoring step (one click in, scores or top k out, LSTM state explicit) to ONNX or TorchScript."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from lstm_rec.checkpoint import load_module
from lstm_rec.model import SessionLSTM

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")


class ScoringStep(nn.Module):
    """One click of a live session: (item, h, c) -> (scores, h, c), or (top scores, top columns, h, c).

    `item` holds item indices (B,) as in the item table written beside the export (index i is
    item_ids[i - 1]); h and c are (num_layers, B, hidden), zeros for a new session. Score column j
    is item index j + 1, so a top column j names item_ids[j].
    """

    def __init__(self, net: SessionLSTM, top_k: int | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.top_k = top_k

    def forward(self, item: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, ...]:
        outputs, (h, c) = self.net.forward_with_state(item[:, None], (h, c))  # (B, 1, H)
        scores = self.net.score(outputs[:, 0])  # (B, n_items)
        if self.top_k is None:
            return scores, h, c
        top = scores.topk(self.top_k, dim=1)
        return top.values, top.indices, h, c

    def initial_state(self, batch_size: int = 1) -> tuple[Tensor, Tensor]:
        lstm = self.net.lstm
        shape = (lstm.num_layers, batch_size, lstm.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)


def export(ckpt_path: str | Path, format: str, output: str | Path, top_k: int | None = None) -> Path:
    """Write the scoring step of a checkpoint to `output`, and its item table to `output`.items.json."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    module = load_module(ckpt_path)
    if top_k is not None and not 1 <= top_k <= len(module.item_index):
        raise ValueError(f"top_k must be between 1 and the catalog size {len(module.item_index)}, got {top_k}")
    step = ScoringStep(module.net, top_k)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    h, c = step.initial_state(2)
    example = (torch.tensor([1, 2]), h, c)
    outputs = ["scores", "h_out", "c_out"] if top_k is None else ["top_scores", "top_columns", "h_out", "c_out"]
    with torch.no_grad():
        if format == "torchscript":
            torch.jit.trace(step, example).save(str(output))
        else:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                step,
                example,
                dynamo=True,
                input_names=["item", "h", "c"],
                output_names=outputs,
                dynamic_shapes=({0: batch}, {1: batch}, {1: batch}),
                verbose=False,
            )
            program.save(str(output))
    ids = module.item_index.ids.tolist()
    table = {"item_ids": ids, "note": "item index i (inputs) is item_ids[i - 1]; score or top column j is item_ids[j]"}
    Path(f"{output}.items.json").write_text(json.dumps(table))
    log.info("exported the %s scoring step of %s to %s", format, ckpt_path, output)
    return output
