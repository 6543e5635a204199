"""Serve recommendations over HTTP: python scripts/serve.py ckpt_path=PATH port=8000; see conf/serve.yaml."""

import hydra
import torch
import uvicorn
from omegaconf import DictConfig

from lstm_rec import Recommender
from lstm_rec.serving.http import create_app


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    rec = Recommender.from_checkpoint(cfg.ckpt_path, device=cfg.device)
    app = create_app(rec, cfg.max_items, cfg.max_k, cfg.recent_clicks, cfg.max_recent_clicks)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)


if __name__ == "__main__":
    main()
