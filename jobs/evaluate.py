"""`kdsr evaluate RUN_DIR [eval.key=value ...]`: re-evaluate a saved run from its selected checkpoint."""

from __future__ import annotations

import sys

from trainer.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
