"""`kdsr import CONFIG [key=value ...]`: bring an existing feature matrix into the feature store layout.

    kdsr import configs/import/scientific-mm-clip-image.yaml
    python -m jobs.import_features configs/import/scientific-mm-clip-text.yaml dataset=null   # source order
"""
from __future__ import annotations

import json
import logging
import sys

from kdsr.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from feature_store.config import ImportConfig
    from feature_store.importer import FeatureImportError, run_import
    from feature_store.store import StoreError
    from kdsr.prepare.dataset import DatasetError

    try:
        cfg = load_config(ImportConfig, argv[0], argv[1:])
    except ConfigError as e:
        print(f"kdsr import: {e}", file=sys.stderr)
        return 2
    try:
        summary = run_import(cfg)
    except (FeatureImportError, StoreError, DatasetError) as e:
        print(f"kdsr import: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
