"""Dissection, the stage after encoding: reduce features, cut their dims into facets, fit the correlation-type
codebook, and write it all next to the features (`run.py`). The trainer never imports this package: it
reads the output through `feature_store.teacher`, which needs only torch."""
