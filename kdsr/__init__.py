"""kdsr: correlation distillation from large frozen encoders into sequential recommenders.

Shared core: typed configs (`kdsr.config`), the `kdsr` command line (`kdsr.cli`), data preparation
(`kdsr.prepare`). The encoders and the Zarr store live in `feature_store`, training in `trainer`, and the
stage entry points (`python -m jobs.<stage>`) in `jobs`.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kdsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
