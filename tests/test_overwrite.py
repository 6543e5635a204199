"""prepare_data overwrite=true replaces only an output that prepare_data wrote, and refuses anything else."""

import json
import os

import pytest

from conftest import compose_config
from lstm_rec.prepare import PrepareError, prepare_data
from lstm_rec.prepare.benchmark import write_clicks

OUTPUT_FILES = [
    "stats.json",
    "stats.md",
    "test.parquet",
    "train_full.parquet",
    "train_tr.parquet",
    "train_valid.parquet",
]


def prepare(tmp_path, *overrides):
    raw = tmp_path / "clicks.dat"
    if not raw.exists():
        write_clicks(raw, 3000, seed=1, n_items=100)
    out = tmp_path / "out"
    overrides = ["dataset=yoochoose", f"input={raw}", f"output={out}", *overrides]
    return out, prepare_data(compose_config("prepare_data", overrides, tmp_path / "hydra"))


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_an_earlier_output_even_in_another_format(tmp_path):
    out, _ = prepare(tmp_path, "output_format=tsv")
    prepare(tmp_path, "overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.dat", "out"]  # nothing moved aside is left


def test_overwrite_refuses_a_folder_that_holds_other_files_beside_stats_json(tmp_path):
    out, _ = prepare(tmp_path)
    (out / "notes.txt").write_text("my own notes")
    (out / "results").mkdir()
    (out / "results" / "run.csv").write_text("a,b\n")
    before = snapshot(out)
    with pytest.raises(PrepareError) as refused:
        prepare(tmp_path, "overwrite=true")
    message = str(refused.value)
    assert f"output: '{out}' holds ['notes.txt', 'results'] besides an earlier prepare_data output" in message
    assert "choose a new output=DIR" in message
    assert snapshot(out) == before


def test_overwrite_refuses_a_stats_json_that_prepare_data_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text(json.dumps({"accuracy": 0.9}))
    (out / "test.parquet").write_text("someone else's file")
    with pytest.raises(PrepareError, match=r"out/stats.json' is not one that prepare_data wrote \(no 'splits'"):
        prepare(tmp_path, "overwrite=true")
    assert snapshot(out) == {"stats.json": b'{"accuracy": 0.9}', "test.parquet": b"someone else's file"}


def test_overwrite_refuses_a_split_file_that_stats_json_does_not_list(tmp_path):
    out, _ = prepare(tmp_path)
    (out / "train_full.tsv").write_text("SessionId\tItemId\tTime\n")  # a name prepare_data uses, not listed
    stats = json.loads((out / "stats.json").read_text())
    del stats["splits"]["train_tr"]
    (out / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(PrepareError, match=r"holds \['train_full.tsv', 'train_tr.parquet'\] besides"):
        prepare(tmp_path, "overwrite=true")


def test_overwrite_refuses_a_symbolic_link_and_a_file(tmp_path):
    real, _ = prepare(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    raw = tmp_path / "clicks.dat"
    overrides = ["dataset=yoochoose", f"input={raw}", f"output={link}", "overwrite=true"]
    with pytest.raises(PrepareError, match=r"output: '.*link' is a symbolic link; give the folder it points to"):
        prepare_data(compose_config("prepare_data", overrides, tmp_path / "hydra"))
    assert os.readlink(link) == str(real) and sorted(p.name for p in real.iterdir()) == OUTPUT_FILES
    (tmp_path / "out2").write_text("a file")
    overrides[2] = f"output={tmp_path / 'out2'}"
    with pytest.raises(PrepareError, match=r"out2' exists and is not a prepare_data output \(not a folder\)"):
        prepare_data(compose_config("prepare_data", overrides, tmp_path / "hydra"))


def test_files_added_while_preparing_are_kept(tmp_path, monkeypatch):
    """A file that appears in the old output after the check is not deleted with it."""
    import lstm_rec.prepare.writer as writer

    out, _ = prepare(tmp_path)
    real_write = writer._write_table

    def write_and_add_a_file(table, path):
        (out / "late.txt").write_text("written while prepare_data ran")
        real_write(table, path)

    monkeypatch.setattr(writer, "_write_table", write_and_add_a_file)
    prepare(tmp_path, "overwrite=true")
    (kept,) = tmp_path.glob(".out.old-*")
    assert snapshot(kept) == {"late.txt": b"written while prepare_data ran"}
    assert sorted(p.name for p in out.iterdir()) == OUTPUT_FILES


def test_overwrite_refuses_a_folder_named_like_a_split_file(tmp_path):
    out, _ = prepare(tmp_path)
    (out / "test.parquet").unlink()
    (out / "test.parquet").mkdir()
    (out / "test.parquet" / "part-0.parquet").write_text("a partitioned dataset of the user's")
    with pytest.raises(PrepareError, match=r"holds \['test.parquet'\] besides an earlier prepare_data output"):
        prepare(tmp_path, "overwrite=true")
    assert (out / "test.parquet" / "part-0.parquet").is_file()
