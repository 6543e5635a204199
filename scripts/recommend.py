"""Recommend next items: python scripts/recommend.py ckpt_path=PATH items=[id1,id2] k=10; see conf/recommend.yaml."""

import hydra
from omegaconf import DictConfig

from lstm_rec.jobs.predict import recommend_job
from lstm_rec.jobs.report import frame_to_markdown


@hydra.main(version_base="1.3", config_path="../conf", config_name="recommend")
def main(cfg: DictConfig) -> None:
    table = recommend_job(cfg)
    if cfg["items"] is not None:
        print(frame_to_markdown(table.drop(columns="session")))
        if table["fallback"].any():
            print("(no item of the session is known to the model: these are the most popular items)")
    else:
        print(f"{len(table)} recommendations written to {cfg.output}")


if __name__ == "__main__":
    main()
