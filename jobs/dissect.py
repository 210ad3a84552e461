"""`kdsr dissect CONFIG [key.sub=value ...]`: reduce features, cut facets, fit the correlation-type codebook.

    kdsr dissect configs/dissect/beauty-minilm.yaml
    kdsr dissect configs/dissect/scientific-mm-image.yaml facets.mode=chunks output=/tmp/sci.chunks.zarr
    ray job submit --working-dir . -- python -m jobs.dissect configs/dissect/beauty-minilm.yaml

Writes `<features>.dissect.zarr` (or `output`): a feature store of the reduced features plus `facets`,
`centroids` and provenance, which `dissect.Teacher.from_store` loads for training.
"""

from __future__ import annotations

import sys
import time

from dissect.config import DissectConfig
from dissect.run import dissect
from kdsr.config import ConfigError, load_config
from kdsr.dataset import DatasetError


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv else 2
    try:
        cfg = load_config(DissectConfig, argv[0], argv[1:])
        out = dissect(cfg, log=_log)
    except (ConfigError, DatasetError, ValueError) as e:  # StoreError, FacetError, CodebookError are ValueErrors
        print(f"kdsr dissect: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
