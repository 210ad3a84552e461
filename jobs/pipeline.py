"""Run the whole pipeline from one config: prepare -> encode -> dissect -> train variants -> report.

    kdsr pipeline configs/pipeline/beauty-minilm.yaml            # what `make demo` runs
    python -m jobs.pipeline configs/pipeline/beauty-minilm.yaml --force
"""
import sys

from kdsr.pipeline import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
