"""Data preparation: read the formats users have, filter, split, map IDs (see `dataset.py` for the output)."""
