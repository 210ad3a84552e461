"""`kdsr import CONFIG [key=value ...]`: bring an existing feature matrix into the feature store layout.

kdsr import configs/import/scientific-mm-clip-image.yaml
python -m jobs.import_features configs/import/scientific-mm-clip-text.yaml dataset=null   # source order
"""

from __future__ import annotations

import sys

from kdsr.entry import run_stage


def main(argv: list[str] | None = None) -> int:
    from feature_store.config import ImportConfig
    from feature_store.importer import FeatureImportError, run_import
    from feature_store.store import StoreError
    from kdsr.dataset import DatasetError

    return run_stage("import", __doc__, argv, ImportConfig, run_import, (FeatureImportError, StoreError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
