"""`kdsr train CONFIG [key.sub=value ...]`: train a sequential recommender with correlation distillation.

    kdsr train configs/train/beauty-sasrec-kd.yaml
    accelerate launch -m jobs.train configs/train/beauty-sasrec-kd.yaml
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 1 --num_processes 2 \
        -m jobs.train configs/train/beauty-sasrec-kd.yaml      # two CPU ranks (gloo), one shared model
"""

from __future__ import annotations

import sys

from kdsr.entry import config_loader, run_stage
from trainer.config import TrainConfig


def run(cfg: TrainConfig) -> dict:
    from trainer.train import run_train

    return run_train(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, argv, config_loader(TrainConfig), run)


if __name__ == "__main__":
    sys.exit(main())
