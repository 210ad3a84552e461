"""`kdsr recommend RUN_DIR [key=value ...]`: top-K items per user from a trained run, in original IDs.

    kdsr recommend runs/train/beauty-sasrec-kd                          # every dataset user, all interactions
    kdsr recommend runs/train/beauty-sasrec-kd k=20 history=train output=recs/beauty
    kdsr recommend runs/train/beauty-sasrec-kd histories=my_users.csv empty_history=popular
    kdsr recommend configs/recommend/beauty-sasrec-kd.yaml              # the same keys from a YAML file

Writes OUTPUT/part-NNNNN.parquet (user_id, rank, item_id, score; rank 1 = best) and _recommend.json (the
request). Re-running the same command resumes: finished parts are skipped. Keys: docs/CONFIG.md, `recommend`.
"""

from __future__ import annotations

import sys

from kdsr.entry import run_dir_loader, run_stage
from trainer.use_config import RecommendConfig


def run(cfg: RecommendConfig) -> dict:
    from trainer.recommend import run_recommend

    return run_recommend(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("recommend", __doc__, argv, run_dir_loader(RecommendConfig), run)


if __name__ == "__main__":
    sys.exit(main())
