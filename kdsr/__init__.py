"""kdsr: correlation distillation from large frozen encoders into sequential recommenders.

This package is the shared core every stage imports: typed configs (`config`), where data lives (`paths`),
the prepared-dataset contract (`dataset`), the error base (`errors`) and one logging setup (`logs`). It
imports no stage. The stages sit above it: `prepare`, `feature_store`, `dissect`, `trainer`; the entry
points and the orchestration (`kdsr` CLI, pipeline, report) in `jobs`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
