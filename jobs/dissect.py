"""`kdsr dissect CONFIG [key.sub=value ...]`: reduce features, cut facets, fit the correlation-type codebook.

    kdsr dissect configs/dissect/beauty-minilm.yaml
    kdsr dissect configs/dissect/scientific-mm-image.yaml facets.mode=chunks output=/tmp/sci.chunks.zarr
    ray job submit --working-dir . -- python -m jobs.dissect configs/dissect/beauty-minilm.yaml

Writes `<features>.dissect.zarr` (or `output`): a feature store of the reduced features plus `facets`,
`centroids` and provenance, which `feature_store.teacher.Teacher.from_store` loads for training.
"""

from __future__ import annotations

import sys

from dissect.config import DissectConfig
from kdsr.entry import config_loader, run_stage


def run(cfg: DissectConfig) -> dict:
    from dissect.run import run_dissect

    return run_dissect(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("dissect", __doc__, argv, config_loader(DissectConfig), run)


if __name__ == "__main__":
    sys.exit(main())
