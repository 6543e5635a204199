from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from omegaconf import DictConfig

from lstm_rec.jobs.config import CONF_DIR, load_config
from lstm_rec.serving.http import free_port
from lstm_rec.serving.server import server_config

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
SHARED_DATA = ROOT.parent / "shared" / "data"
YOOCHOOSE = SHARED_DATA / "yoochoose-100k"

# Under pytest-xdist (two workers on the 2-core CI machine) each worker runs at one thread, so that they never
# oversubscribe the cores; alone, the suite runs at two.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
torch.set_num_threads(THREADS)


def _lock_files(run: str) -> Path:
    """The stem of the gate and lock files of test run `run` (pytest-xdist's run id)."""
    return Path(tempfile.gettempdir()) / f"lstm_rec-tests-{run}"


def pytest_configure(config: pytest.Config) -> None:
    """In pytest-xdist's controller, the run's id is chosen here rather than by xdist, so that the run can remove the
    workers' gate and lock files (pytest_runtest_protocol) when it ends."""
    controller = os.environ.get("PYTEST_XDIST_WORKER") is None and config.pluginmanager.hasplugin("xdist")
    if controller and config.getoption("testrunuid", None) is None:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    run = getattr(config.option, "testrunuid", None)
    if os.environ.get("PYTEST_XDIST_WORKER") is None and run is not None:
        for suffix in (".gate", ".lock"):
            Path(f"{_lock_files(run)}{suffix}").unlink(missing_ok=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Under pytest-xdist, a test marked `alone` (its assertions time the wall clock) runs while no other worker runs
    a test. Every test holds a shared lock on a file of the run through its setup (the fixtures it builds first), call
    and teardown, and an `alone` test holds it exclusively. A test passes a gate first, which an `alone` test keeps
    closed from its wait on: a worker's next test waits behind it rather than keeping the shared lock held."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    files = _lock_files(run)
    with open(f"{files}.gate", "a") as gate, open(f"{files}.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


# A small, fast version of every run; tests add their own overrides after these.
# The recipe most tests train with: full-softmax cross-entropy, Adam at a constant rate, separate output weights, no
# dropout, window batches, clipped gradients (plain and deterministic); the defaults' recipe (session-parallel steps,
# BPR-max, Adagrad with momentum, warm-up and cosine, tied, dropout) has tests of its own (test_defaults.py,
# test_parallel.py). Tests that pick another schedule group leave out "model.scheduler=null".
TINY_RECIPE = [
    "model/loss=cross_entropy",
    "model/optimizer=adam",
    "model.scheduler=null",
    "model.tie_weights=false",
    "model.dropout=0.0",
    "model.embedding_dropout=0.0",
    "data.batching=windows",
    "trainer.gradient_clip_val=1.0",
]
TINY = [
    "data.n_sessions=3000",
    "data.n_items=200",
    "data.batch_size=64",
    "model.hidden=32",
    "model.embedding_dim=32",
    *TINY_RECIPE,
    "model.optimizer.lr=0.01",
    "trainer.max_epochs=3",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "refit=false",  # the refit's own tests (test_refit.py, test_defaults.py) turn it on
]


# Jobs whose num_threads defaults to auto; tests pin it so that a busy machine does not change their numbers. tune's
# workers (auto) are pinned to 1: its tests of workers=auto ask for it.
PINNED_THREADS = {"train", "eval", "benchmark", "tune"}


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The real config, as the scripts see it, with this test's output directory."""
    pinned = [f"num_threads={THREADS}"] if config_name in PINNED_THREADS else []
    pinned += ["workers=1"] if config_name == "tune" else []  # tune's workers=auto would run two trials at a time
    return load_config(config_name, [*pinned, *overrides], output_dir=str(output_dir))


@pytest.fixture
def train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_config("train", [*(TINY if tiny else []), *overrides], tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def yoochoose() -> Path:
    if not YOOCHOOSE.is_dir():
        pytest.skip(f"the shared yoochoose-100k sample is not at {YOOCHOOSE}")
    return YOOCHOOSE


def write_events(path: Path, rows: list[tuple], columns=("SessionId", "ItemId", "Time"), sep: str = "\t") -> Path:
    frame = pd.DataFrame(rows, columns=list(columns))
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, sep=sep, index=False)
    return path


@contextmanager
def serving(app: FastAPI, **server_settings: Any) -> Iterator[str]:
    """The app on a real uvicorn server (the settings of scripts/serve.py) in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(server_config(app, port=port, **{"log_level": "warning", **server_settings}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a script of scripts/ as a user would, from the repository root; it must succeed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# The trained models that test files share (session-scoped): the plain LSTM of TINY (default loss and optimizer,
# separate output weights), and a two-layer tied ensemble whose second member has repeat scores (which need the
# session's latest clicks besides the state) and its own dropout, with a recent-popularity prior (which every way
# of scoring must add); neither has the kNN blend, which export leaves out (tests/test_blend.py serves one).
TRAINED = {
    "lstm": ["~blend"],
    "ensemble": [
        "model.num_layers=2",
        "model.tie_weights=true",
        "model.members=[{},{repeat_window:3,dropout:0.1}]",
        "prior=recent_popularity",
        "prior.weight=0.5",
        "~blend",
    ],
}


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each model of TRAINED, trained once for the whole session: its run directory and final metrics."""
    from lstm_rec.jobs.train import train

    runs = {}
    for name, overrides in TRAINED.items():
        out = tmp_path_factory.mktemp(name) / "run"
        runs[name] = (out, train(compose_config("train", [*TINY, *overrides], out)))
    return runs


@pytest.fixture(scope="session", params=list(TRAINED))
def checkpoint(request, trained_runs) -> str:
    """The tested checkpoint of each shared model."""
    return trained_runs[request.param][1]["checkpoint"]
