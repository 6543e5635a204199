"""Malformed checkpoints fail with one clear CheckpointError, before anything is built from them."""

import copy
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, compose_config
from lstm_rec.checkpoint import CheckpointError, load_network
from lstm_rec.checkpoint_checks import network_shapes
from lstm_rec.data.sessions import ItemIndex
from lstm_rec.jobs.train import train
from lstm_rec.model import build_network
from lstm_rec.module import SessionRecModule
from lstm_rec.prior import ItemPrior

N_ITEMS = 40
NETWORK = {"embedding_dim": 6, "hidden": 8, "num_layers": 2, "members": [{}, {"repeat_window": 3}]}


def checkpoint_dict(**network) -> dict:
    """What Lightning saves for a small untrained module: its state_dict and lstm_rec's entry."""
    index = ItemIndex(ids=np.arange(100, 100 + N_ITEMS), counts=np.arange(1, N_ITEMS + 1))
    prior = ItemPrior(torch.rand(N_ITEMS), 0.5, 8.0)
    module = SessionRecModule(index, prior=prior, **(NETWORK | network))
    checkpoint = {"epoch": 0, "state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def good() -> dict:
    return checkpoint_dict()


def test_a_well_formed_checkpoint_loads(good, tmp_path):
    torch.save(good, tmp_path / "good.ckpt")
    model = load_network(tmp_path / "good.ckpt")
    assert (model.network.n_members, model.network.hidden_size, len(model.item_index)) == (2, 8, N_ITEMS)
    torch.testing.assert_close(model.network.item_embedding, good["state_dict"]["net.item_embedding"])


def entry(checkpoint):
    return checkpoint["lstm_rec"]


def setting(name, value):
    return lambda c: entry(c)["network"].__setitem__(name, value)


def weight(name, value):
    return lambda c: c["state_dict"].__setitem__(name, value)


# (name, how the checkpoint is broken, what the message says after "ckpt_path '<file>'")
CORRUPTIONS = [
    ("no state_dict", lambda c: c.pop("state_dict"), r"has no 'state_dict' mapping of weights"),
    ("state_dict a list", lambda c: c.__setitem__("state_dict", [1, 2]), r"has no 'state_dict' mapping of weights"),
    ("missing weight", lambda c: c["state_dict"].pop("net.lstms.1.weight_hh_l1"), r"lacks net.lstms.1.weight_hh_l1"),
    ("extra weight", weight("net.extra.weight", torch.zeros(2)), r"holds net.extra.weight, which its network"),
    ("weight a list", weight("net.output.bias", [[0.0] * N_ITEMS] * 2), r"net.output.bias is a list, not a tensor"),
    ("integer weight", weight("net.output.bias", torch.zeros(2, N_ITEMS, dtype=torch.long)), r"not floating-point"),
    ("wrong shape", weight("net.output.bias", torch.zeros(2, N_ITEMS + 1)), r"net.output.bias has shape \(2, 41\)"),
    ("huge hidden", setting("hidden", 4_000_000), r"net.lstms.0.weight_ih_l0 has shape \(32, 6\), but its network"),
    ("huge embedding", setting("embedding_dim", 10**9), r"net.item_embedding has shape \(2, 41, 6\)"),
    ("many layers", setting("num_layers", 1000), r"lacks net.lstms.0.weight_ih_l2"),
    ("many members", setting("members", [{}] * 10**4), r"net.item_embedding has shape \(2, 41, 6\)"),
    ("hidden as text", setting("hidden", "8"), r"network setting hidden must be a positive integer, got '8'"),
    ("negative hidden", setting("hidden", -8), r"network setting hidden must be a positive integer, got -8"),
    ("fractional hidden", setting("hidden", 8.5), r"network setting hidden must be a positive integer, got 8.5"),
    ("boolean layers", setting("num_layers", True), r"network setting num_layers must be a positive integer, got"),
    ("dropout 2", setting("dropout", 2.0), r"network setting dropout must be a number in \[0, 1\), got 2.0"),
    ("unknown cell", setting("cell", "rnn"), r"network setting cell must be one of \['lstm', 'gru'\], got 'rnn'"),
    ("other cell", setting("cell", "gru"), r"net.lstms.0.weight_ih_l0 has shape \(32, 6\), but its network"),
    ("unknown init", setting("recurrent_init", "he"), r"recurrent_init must be one of \['torch', 'glorot'\], got 'he'"),
    ("tie as text", setting("tie_weights", "yes"), r"network setting tie_weights must be true or false, got 'yes'"),
    ("unknown setting", setting("width", 3), r"unknown network settings \['width'\]"),
    ("member bad key", setting("members", [{}, {"hidden": 4}]), r"members\[1\] sets \['hidden'\]; a member can set"),
    ("member a number", setting("members", [{}, 3]), r"members\[1\] must be a mapping of settings, got 3"),
    ("member window", setting("members", [{}, {"repeat_window": -1}]), r"members\[1\].repeat_window must be an"),
    ("network a list", lambda c: entry(c).__setitem__("network", [8]), r"'network' must be a mapping of settings"),
    ("no item counts", lambda c: entry(c).pop("item_counts"), r"'item_counts' must be a 1-D integer tensor"),
    ("counts float", lambda c: entry(c).__setitem__("item_counts", torch.ones(N_ITEMS)), r"'item_counts' must be"),
    ("counts short", lambda c: entry(c).__setitem__("item_counts", torch.ones(3, dtype=torch.long)), r"3 counts"),
    ("ids a number", lambda c: entry(c).__setitem__("item_ids", 5), r"'item_ids' must be a 1-D tensor of ids or a"),
    ("ids 2-D", lambda c: entry(c).__setitem__("item_ids", torch.zeros(2, 20)), r"'item_ids' must be a 1-D tensor"),
    ("ids mixed", lambda c: entry(c).__setitem__("item_ids", ["a", 1] * 20), r"'item_ids' must be a 1-D tensor"),
    ("ids repeated", lambda c: entry(c)["item_ids"].__setitem__(1, 100), r"'item_ids' repeats ids \(100\)"),
    ("prior a list", lambda c: entry(c).__setitem__("prior", [1]), r"'prior' must be null or a mapping"),
    ("prior short", lambda c: entry(c)["prior"].__setitem__("scores", torch.zeros(3)), r"prior scores must be a 1-D"),
    ("prior weight", lambda c: entry(c)["prior"].__setitem__("weight", "high"), r"prior weight must be a number"),
    ("prior hours", lambda c: entry(c)["prior"].__setitem__("hours", -1), r"prior hours must be null or a positive"),
    ("train seconds", lambda c: entry(c).__setitem__("train_seconds", "1h"), r"'train_seconds' must be a number"),
    ("version text", lambda c: entry(c).__setitem__("format_version", "2"), r"has checkpoint format version '2'"),
    ("version 3", lambda c: entry(c).__setitem__("format_version", 3), r"has checkpoint format version 3"),
    ("entry a list", lambda c: c.__setitem__("lstm_rec", [1]), r"is not an lstm_rec checkpoint"),
    ("not a dict", lambda c: c.clear() or c.__setitem__("x", 1), r"is not an lstm_rec checkpoint"),
]


@pytest.mark.parametrize("name, corrupt, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_malformed_checkpoint_fails_with_a_checkpoint_error_naming_the_file(good, tmp_path, name, corrupt, message):
    checkpoint = copy.deepcopy(good)
    corrupt(checkpoint)
    path = tmp_path / "broken.ckpt"
    torch.save(checkpoint, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"^ckpt_path '{re.escape(str(path))}'.*{message}"):
        load_network(path)
    assert time.perf_counter() - start < 10.0  # seconds, on a busy 2-core machine


def test_a_checkpoint_that_is_not_a_mapping_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match=r"list.ckpt' is not an lstm_rec checkpoint \(it has no 'lstm_rec'"):
        load_network(tmp_path / "list.ckpt")


def test_a_tensor_that_repeats_its_elements_is_refused_before_anything_is_built(good, tmp_path):
    """A view with zero strides saves a few bytes but claims any shape; settings that match it are refused."""
    checkpoint = copy.deepcopy(good)
    hidden = 10**6
    entry(checkpoint)["network"] |= {"hidden": hidden, "num_layers": 1, "members": None}
    state = {"net.item_embedding": good["state_dict"]["net.item_embedding"][:1]}
    state["net.lstms.0.weight_hh_l0"] = torch.zeros(1).expand(4 * hidden, hidden)  # 4 TB claimed, 4 bytes stored
    checkpoint["state_dict"] = state
    torch.save(checkpoint, tmp_path / "expanded.ckpt")
    assert (tmp_path / "expanded.ckpt").stat().st_size < 2**20
    with pytest.raises(
        CheckpointError, match=r"state_dict/net.lstms.0.weight_hh_l0 has 4000000000000 elements but its file stores 1 "
    ):
        load_network(tmp_path / "expanded.ckpt")


def version_1(**broken) -> dict:
    """A minimal lstm_rec 0.1 checkpoint (one network's own weights under net.), with `broken` entries replaced."""
    module = checkpoint_dict(members=None, num_layers=1, tie_weights=True, embedding_dim=8)
    weights = {"net.item_embedding.weight": module["state_dict"]["net.item_embedding"][0]}
    for name, value in module["state_dict"].items():
        if name.startswith("net.lstms.0."):
            weights["net.lstm." + name.removeprefix("net.lstms.0.")] = value
    weights["net.output_bias"] = module["state_dict"]["net.output_bias"][0]
    hparams = {"embedding_dim": 8, "hidden": 8, "num_layers": 1, "tie_weights": True}
    old = {"format_version": 1, "item_ids": entry(module)["item_ids"], "item_counts": entry(module)["item_counts"]}
    return {"state_dict": weights, "hyper_parameters": hparams, "lstm_rec": old} | broken


def test_a_version_1_checkpoint_loads(tmp_path):
    torch.save(version_1(), tmp_path / "v1.ckpt")
    assert load_network(tmp_path / "v1.ckpt").network.hidden_size == 8


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"state_dict": {}}, r"format version 1 checkpoint without its weights \(no 'net.item_embedding.weight'\)"),
        ({"hyper_parameters": [1]}, r"format version 1 checkpoint whose 'hyper_parameters' is not a mapping"),
        ({"hyper_parameters": {"members": 3}}, r"format version 1 checkpoint whose 'members' is not a list"),
    ],
)
def test_a_malformed_version_1_checkpoint_fails_with_a_checkpoint_error(tmp_path, broken, message):
    torch.save(version_1(**broken), tmp_path / "v1.ckpt")
    with pytest.raises(CheckpointError, match=rf"^ckpt_path '{re.escape(str(tmp_path / 'v1.ckpt'))}' .*{message}"):
        load_network(tmp_path / "v1.ckpt")


LOAD_HUGE = """
import resource, sys, time
from lstm_rec.checkpoint import CheckpointError, load_network
before, slowest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 0.0
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_network(path)
    except CheckpointError:
        slowest = max(slowest, time.perf_counter() - start)
    else:
        raise SystemExit(f"{path} loaded")
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, slowest)
"""


def test_huge_settings_allocate_nothing(good, tmp_path):
    """Checkpoints whose settings claim terabytes are refused under a 4 GiB data limit, with no rise in memory."""
    paths = []
    for name, value in (("hidden", 4_000_000), ("embedding_dim", 10**9), ("members", [{}] * 10**4)):
        checkpoint = copy.deepcopy(good)
        entry(checkpoint)["network"][name] = value
        paths.append(str(tmp_path / f"{name}.ckpt"))
        torch.save(checkpoint, paths[-1])
    limit = lambda: resource.setrlimit(resource.RLIMIT_DATA, (2**32, 2**32))  # noqa: E731
    command = [sys.executable, "-c", LOAD_HUGE, *paths]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after, slowest = map(float, result.stdout.split()[-3:])
    print(f"peak memory {before / 1024:.0f} MiB after imports, {after / 1024:.0f} MiB after; slowest {slowest:.2f} s")
    assert after - before < 64 * 1024  # KiB


@pytest.mark.parametrize(
    "network",
    [
        {},
        {"tie_weights": True},
        {"tie_weights": True, "hidden": 6},
        {"num_layers": 3, "members": [{}, {"repeat_window": 2}, {"repeat_window": 5, "dropout": 0.2}]},
        {"repeat_window": 4, "tie_weights": True, "members": [{}, {}]},
        {"cell": "gru", "num_layers": 2, "tie_weights": True, "members": [{}, {"dropout": 0.2}]},
    ],
)
def test_the_shapes_checked_are_those_of_the_real_network(network):
    settings = {"embedding_dim": 6, "hidden": 10} | network
    real = build_network(N_ITEMS, settings)
    assert dict(network_shapes(N_ITEMS, settings)) == {name: tuple(w.shape) for name, w in real.state_dict().items()}


class RunsCode:
    """Test helper: unpickling it without weights-only loading creates `marker`."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_resuming_never_runs_code_from_a_checkpoint_whatever_the_environment_says(good, tmp_path, monkeypatch):
    marker = tmp_path / "code ran"
    path = tmp_path / "evil.ckpt"
    torch.save(good | {"payload": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the payload does run code when loaded without weights_only
    assert marker.exists()
    marker.unlink()

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cfg = compose_config("train", [*TINY, "trainer.max_epochs=1", f"ckpt_path={path}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match=rf"^ckpt_path '{re.escape(str(path))}' .* holds code, which lstm_rec"):
        train(cfg)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil.ckpt' is not a readable PyTorch checkpoint of tensors"):
        load_network(path)
    assert not marker.exists()


def test_resuming_with_other_network_settings_names_the_weight_that_differs(good, tmp_path):
    index = ItemIndex(ids=np.arange(100, 100 + N_ITEMS), counts=np.arange(1, N_ITEMS + 1))
    module = SessionRecModule(index, prior=ItemPrior(torch.rand(N_ITEMS), 0.5, 8.0), **(NETWORK | {"hidden": 16}))
    with pytest.raises(
        CheckpointError, match=r"net.lstms.0.weight_ih_l0 has shape \(32, 6\), but this run's model settings need"
    ):
        module.on_load_checkpoint(copy.deepcopy(good))


def test_a_trainer_without_the_weights_only_checkpoint_io_is_refused(tmp_path):
    cfg = compose_config("train", [*TINY, "trainer.plugins=null"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"trainer.plugins: the trainer reads checkpoints with TorchCheckpointIO"):
        train(cfg)
    assert not list(tmp_path.glob("**/*.ckpt"))


RESUME = [*TINY, "data.n_sessions=600", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def last_checkpoint(tmp_path_factory) -> dict:
    """The last.ckpt of a one-epoch run of RESUME, loaded."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config("train", RESUME, out))
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


LIGHTNING_CORRUPTIONS = [
    ("no version", lambda c: c.pop("pytorch-lightning_version"), r"it has no 'pytorch-lightning_version'"),
    ("loops a list", lambda c: c.__setitem__("loops", [1]), r"its 'loops' must be a mapping, got list"),
    ("epoch as text", lambda c: c.__setitem__("epoch", "one"), r"its 'epoch' must be an integer, got str"),
    ("no optimizer", lambda c: c.pop("optimizer_states"), r"holds no \['optimizer_states'\] \(saved with weights"),
    ("optimizer junk", lambda c: c.__setitem__("optimizer_states", [{"x": 1}]), r"optimizer_states\[0\] is not an"),
    ("schedulers a number", lambda c: c.__setitem__("lr_schedulers", 5), r"its 'lr_schedulers' must be a list"),
]


@pytest.mark.parametrize("name, corrupt, message", LIGHTNING_CORRUPTIONS, ids=[c[0] for c in LIGHTNING_CORRUPTIONS])
def test_resuming_from_a_malformed_training_state_fails_with_a_checkpoint_error(
    last_checkpoint, tmp_path, name, corrupt, message
):
    checkpoint = copy.deepcopy(last_checkpoint)
    corrupt(checkpoint)
    path = tmp_path / "broken.ckpt"
    torch.save(checkpoint, path)
    cfg = compose_config("train", [*RESUME, "trainer.max_epochs=2", f"ckpt_path={path}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match=rf"^ckpt_path '{re.escape(str(path))}'.*{message}"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
