"""`kdsr sweep CONFIG [key.sub=value ...]`: many trainings on Ray Tune, each arm's configuration chosen on
validation only, its test read once, lifts with paired tests.

    kdsr sweep configs/sweep/beauty-arms.yaml
    kdsr sweep configs/sweep/beauty-arms.yaml ray.address=auto          # trials on a running Ray cluster
    kdsr sweep configs/sweep/beauty-arms.yaml seeds=[0,1,2] asha.enabled=true

Re-running skips finished trials and resumes interrupted ones from their checkpoints. Ctrl-C stops the trials
and writes the state so far (no test is read); `train=false` reports a running study's state.
"""

from __future__ import annotations

import sys

from kdsr.config import load_config
from kdsr.entry import run_stage
from trainer.sweep import SweepConfig


def main(argv: list[str] | None = None) -> int:
    from trainer.sweep import run_sweep

    source: list[str] = []

    def load(args: list[str]) -> SweepConfig:
        source.append(args[0])
        return load_config(SweepConfig, args[0], args[1:])

    return run_stage("sweep", __doc__, argv, load, lambda cfg: run_sweep(cfg, source[0]))


if __name__ == "__main__":
    sys.exit(main())
