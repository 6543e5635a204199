"""Serve recommendations over HTTP: python scripts/serve.py ckpt_path=PATH port=8000; see conf/serve.yaml."""

import sys

import hydra
import torch
import uvicorn
from omegaconf import DictConfig

from lstm_rec.serving.http import create_app
from lstm_rec.serving.live import LiveModel
from lstm_rec.serving.server import server_config


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    # Bodies are parsed and scored in the thread pool; a 1 ms GIL switch interval (CPython's default: 5 ms) lets the
    # event loop, which answers /health, in sooner meanwhile.
    sys.setswitchinterval(0.001)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    model = LiveModel.from_checkpoint(cfg.ckpt_path, device=cfg.device)
    app = create_app(
        model,
        max_items=cfg.max_items,
        max_k=cfg.max_k,
        recent_clicks=cfg.recent_clicks,
        max_recent_clicks=cfg.max_recent_clicks,
        max_recent_weight=cfg.max_recent_weight,
        max_id_chars=cfg.max_id_chars,
        max_body_bytes=cfg.max_body_bytes,
        api_docs=cfg.api_docs,
        reload=cfg.reload,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
    )
    config = server_config(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        request_timeout=cfg.request_timeout,
        timeout_keep_alive=cfg.timeout_keep_alive,
        h11_max_incomplete_event_size=cfg.h11_max_incomplete_event_size,
        max_connections=cfg.max_connections,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
