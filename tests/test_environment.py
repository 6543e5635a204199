"""environment.json: the packages, commit and machine that a run's figures came from."""

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lstm_rec
from lstm_rec.jobs.environment import PACKAGES, cpu_name, environment, git_commit, write_environment


def test_the_versions_are_those_imported():
    found = environment()
    assert set(found["packages"]) == set(PACKAGES)
    assert found["packages"]["torch"] == torch.__version__
    assert found["packages"]["numpy"] == np.__version__
    assert found["packages"]["pandas"] == pd.__version__
    assert found["python"] == platform.python_version()
    assert found["torch_threads"] == torch.get_num_threads()
    assert found["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert found["gpu"] is None or found["gpu"] == torch.cuda.get_device_name(0)


def test_a_package_that_is_not_installed_is_null(monkeypatch):
    monkeypatch.setattr("lstm_rec.jobs.environment.PACKAGES", ("numpy", "no-such-distribution-here"))
    assert environment()["packages"] == {"numpy": np.__version__, "no-such-distribution-here": None}


def _git(root, *args):
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_of_a_checkout_and_whether_its_tracked_files_changed(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "notes.txt").write_text("an untracked file changes nothing\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"


def test_no_commit_outside_a_checkout_or_below_its_root(tmp_path):
    assert git_commit(tmp_path) is None
    _git(tmp_path, "init", "-q")
    (tmp_path / "sub").mkdir()
    assert git_commit(tmp_path / "sub") is None  # an enclosing repository is not lstm_rec's checkout


def test_the_commit_is_this_checkouts():
    root = Path(lstm_rec.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("lstm_rec runs from an installed copy here, not a git checkout")
    assert git_commit().removesuffix("-dirty") == _git(root, "rev-parse", "HEAD")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux's /proc/cpuinfo")
def test_the_cpu_is_named_as_linux_reports_it():
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    assert cpu_name() == (names[0] if names else (platform.processor() or None))


def test_the_file_is_the_mapping(tmp_path):
    path = write_environment(tmp_path / "run")
    assert path == tmp_path / "run" / "environment.json"
    written = json.loads(path.read_text())
    assert written["packages"] == environment()["packages"]
    assert written["cpu_count"] == environment()["cpu_count"]
