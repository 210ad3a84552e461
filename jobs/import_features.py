"""`kdsr import CONFIG [key=value ...]`: bring an existing feature matrix into the feature store layout.

kdsr import configs/import/scientific-mm-clip-image.yaml
python -m jobs.import_features configs/import/scientific-mm-clip-text.yaml dataset=null   # source order
"""

from __future__ import annotations

import sys

from feature_store.config import ImportConfig
from kdsr.entry import config_loader, run_stage


def run(cfg: ImportConfig) -> dict:
    from feature_store.importer import run_import

    return run_import(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_stage("import", __doc__, argv, config_loader(ImportConfig), run)


if __name__ == "__main__":
    sys.exit(main())
