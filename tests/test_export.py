"""Exported scoring steps (ONNX through onnxruntime, TorchScript) against the PyTorch model, click by click."""

import json

import numpy as np
import pytest
import torch

from lstm_rec import Recommender
from lstm_rec.serving.export import ScoringStep, export

# The shared checkpoints (conftest.TRAINED): a plain tied LSTM, and an ensemble with repeat scores (which carry
# `recent`) and a recent-popularity prior (which the exported step must add too).


def random_sessions(n_items: int, seed: int = 0) -> torch.Tensor:
    """(B, T) random clicks: 3 sessions of 6 clicks, run side by side."""
    return torch.from_numpy(np.random.default_rng(seed).integers(1, n_items + 1, size=(3, 6)))


def reference(checkpoint):
    rec = Recommender.from_checkpoint(checkpoint)
    return rec, ScoringStep(rec.scorer)


def run_pytorch(step: ScoringStep, sessions: torch.Tensor) -> list[np.ndarray]:
    state = step.initial_state(len(sessions))  # (h, c), plus `recent` with repeat scores
    scores = []
    with torch.no_grad():
        for t in range(sessions.shape[1]):
            out, *state = step(sessions[:, t], *state)
            scores.append(out.numpy())
    return scores


def test_scoring_step_matches_the_full_sequence_model(checkpoint):
    rec, step = reference(checkpoint)
    sessions = random_sessions(rec.n_items)
    with torch.no_grad():
        whole = rec.scorer.score(rec.scorer.encode(sessions)).numpy()  # (B, T, n_items)
    for t, scores in enumerate(run_pytorch(step, sessions)):
        np.testing.assert_allclose(scores, whole[:, t], rtol=1e-5, atol=1e-5)


def test_torchscript_export(checkpoint, tmp_path):
    rec, step = reference(checkpoint)
    path = export(checkpoint, "torchscript", tmp_path / "step.pt")
    loaded = torch.jit.load(str(path))
    sessions = random_sessions(rec.n_items, seed=1)
    expected = run_pytorch(step, sessions)
    state = step.initial_state(len(sessions))
    for t in range(sessions.shape[1]):
        scores, *state = loaded(sessions[:, t], *state)
        np.testing.assert_allclose(scores.detach().numpy(), expected[t], rtol=1e-5, atol=1e-5)
    table = json.loads((tmp_path / "step.pt.items.json").read_text())
    assert table["item_ids"] == rec.item_index.ids.tolist()


def test_onnx_export_with_top_k(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rec, step = reference(checkpoint)
    path = export(checkpoint, "onnx", tmp_path / "step.onnx", top_k=10)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sessions = random_sessions(rec.n_items, seed=2)
    expected = run_pytorch(step, sessions)
    names = [i.name for i in session.get_inputs()][1:]  # h, c, and recent with repeat scores
    state = [t.numpy() for t in step.initial_state(len(sessions))]
    assert len(names) == len(state) == (3 if step.window else 2)
    for t in range(sessions.shape[1]):
        top_scores, top_columns, *state = session.run(
            None, {"item": sessions[:, t].numpy(), **dict(zip(names, state, strict=True))}
        )
        want = np.sort(expected[t], axis=1)[:, ::-1][:, :10]
        np.testing.assert_allclose(top_scores, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.take_along_axis(expected[t], top_columns, axis=1), want, rtol=1e-4, atol=1e-4)
    # The top columns name the same items as the Python API does for the same clicks.
    ids = rec.item_index.ids
    first = rec.recommend(ids[sessions[0].numpy() - 1].tolist(), k=10)
    assert ids[top_columns[0]].tolist() == [item for item, _ in first]


def test_export_rejects_bad_requests(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export(checkpoint, "tflite", tmp_path / "x")
    with pytest.raises(ValueError, match="top_k must be between"):
        export(checkpoint, "onnx", tmp_path / "x", top_k=0)


def test_a_gru_network_exports_to_torchscript_and_onnx(tmp_path):
    """A GRU carries h and a zero c: both exports step through a session as the PyTorch model does."""
    from lstm_rec.checkpoint import write_entry
    from lstm_rec.data import ItemIndex
    from lstm_rec.model import build_network

    torch.manual_seed(0)
    index, settings = ItemIndex.from_items(np.arange(1, 31)), {"embedding_dim": 8, "hidden": 8, "cell": "gru"}
    network = build_network(len(index), settings)
    checkpoint = {"state_dict": {f"net.{name}": value for name, value in network.state_dict().items()}}
    write_entry(checkpoint, index, settings, None, 0.0)
    torch.save(checkpoint, tmp_path / "gru.ckpt")
    rec, step = reference(tmp_path / "gru.ckpt")
    assert isinstance(rec.scorer.scorer.lstms[0], torch.nn.GRU)
    sessions = random_sessions(rec.n_items, seed=3)
    with torch.no_grad():
        whole = rec.scorer.score(rec.scorer.encode(sessions)).numpy()
    expected = run_pytorch(step, sessions)
    for t in range(sessions.shape[1]):
        np.testing.assert_allclose(expected[t], whole[:, t], rtol=1e-5, atol=1e-5)
    loaded = torch.jit.load(str(export(tmp_path / "gru.ckpt", "torchscript", tmp_path / "gru.pt")))
    state = step.initial_state(len(sessions))
    for t in range(sessions.shape[1]):
        scores, *state = loaded(sessions[:, t], *state)
        np.testing.assert_allclose(scores.detach().numpy(), expected[t], rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    onnx = ort.InferenceSession(str(export(tmp_path / "gru.ckpt", "onnx", tmp_path / "gru.onnx", top_k=5)))
    names = [i.name for i in onnx.get_inputs()][1:]
    state = [t.numpy() for t in step.initial_state(len(sessions))]
    for t in range(sessions.shape[1]):
        top_scores, _, *state = onnx.run(None, {"item": sessions[:, t].numpy(), **dict(zip(names, state, strict=True))})
        want = np.sort(expected[t], axis=1)[:, ::-1][:, :5]
        np.testing.assert_allclose(top_scores, want, rtol=1e-4, atol=1e-4)
