"""num_threads=auto: the cores left free by other running processes, never more than torch's default."""

import pytest

from lstm_rec import threads


def write_stat(tmp_path, running: int) -> str:
    path = tmp_path / "stat"
    path.write_text(f"cpu  1 2 3 4\nctxt 99\nprocs_running {running}\nprocs_blocked 0\n")
    return str(path)


@pytest.mark.parametrize(("running", "expected"), [(1, 0), (2, 1), (5, 4)])
def test_other_running_processes_leaves_this_one_out(tmp_path, running, expected):
    stat = write_stat(tmp_path, running)
    assert threads.other_running_processes(samples=2, interval=0, stat=stat) == expected


def test_other_running_processes_is_zero_without_proc(tmp_path):
    assert threads.other_running_processes(samples=1, stat=str(tmp_path / "missing")) == 0


@pytest.mark.parametrize(
    ("cores", "busy", "default", "expected"), [(2, 0, 2, 2), (2, 1, 2, 1), (2, 3, 2, 1), (16, 1, 8, 8), (16, 10, 8, 6)]
)
def test_auto_takes_the_free_cores_up_to_torchs_default(monkeypatch, cores, busy, default, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "other_running_processes", lambda: busy)
    assert threads.resolve_threads("auto", default) == expected


def test_numbers_and_null_pass_through():
    assert threads.resolve_threads(3, 2) == 3
    assert threads.resolve_threads("3", 2) == 3
    assert threads.resolve_threads(None, 2) is None


@pytest.mark.parametrize("setting", [0, -1, "two", 1.5, "1.5"])
def test_bad_settings_name_the_key_and_what_is_expected(setting):
    with pytest.raises(ValueError, match=r"num_threads=.*expected a positive whole number, 'auto' or null"):
        threads.resolve_threads(setting, 2)


def test_apply_threads_sets_torch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
