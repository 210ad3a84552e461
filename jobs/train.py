"""`kdsr train CONFIG [key.sub=value ...]`: train a sequential recommender with correlation distillation.

    accelerate launch -m trainer.train configs/train/beauty-sasrec-kd.yaml
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 1 --num_processes 2 \
        -m trainer.train configs/train/beauty-sasrec-kd.yaml      # two CPU ranks (gloo), one shared model
"""

from __future__ import annotations

import sys

from trainer.train import main

if __name__ == "__main__":
    sys.exit(main())
