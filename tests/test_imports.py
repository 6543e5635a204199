"""Layers that show: scoring and serving a checkpoint never load Lightning, `import lstm_rec` loads no torch, and
preparing data loads neither."""

import json

from conftest import run_script


def modules_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    printed = run_script("-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))").stdout
    return {name.split(".")[0] for name in json.loads(printed.strip().splitlines()[-1])}


def test_import_lstm_rec_loads_neither_torch_nor_lightning():
    loaded = modules_after("import lstm_rec")
    assert "torch" not in loaded and "lightning" not in loaded


def test_scoring_and_serving_a_checkpoint_load_no_lightning(checkpoint):
    code = f"""
from lstm_rec import Recommender
from lstm_rec.checkpoint import load_network
from lstm_rec.serving.export import ScoringStep
from lstm_rec.serving.http import create_app
rec = Recommender.from_checkpoint({checkpoint!r})
ids = rec.item_index.ids.tolist()
assert len(rec.recommend(ids[:3], k=5)) == 5
create_app(rec)
ScoringStep(load_network({checkpoint!r}).scorer())
"""
    loaded = modules_after(code)
    assert "torch" in loaded and not {"lightning", "pytorch_lightning", "lightning_fabric"} & loaded


def test_preparing_data_loads_neither_torch_nor_lightning():
    loaded = modules_after("from lstm_rec.prepare import prepare_data")
    assert "torch" not in loaded and "lightning" not in loaded
