"""The project's Hydra config, composed from Python (notebooks, tests) the way the scripts compose it."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load_config(
    config_name: str = "train", overrides: list[str] | None = None, output_dir: str | None = None
) -> DictConfig:
    """Compose conf/<config_name>.yaml with `overrides`; paths resolve from the repository root."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"no config folder at {CONF_DIR}; use lstm_rec from its repository checkout")
    fixed = [f"paths.root_dir={CONF_DIR.parent}"] + ([f"paths.output_dir={output_dir}"] if output_dir else [])
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name=config_name, overrides=[*fixed, *(overrides or [])])
