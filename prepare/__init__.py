"""Data preparation, the first stage: read the formats users have, filter, split, map IDs. The output
folder follows the contract in `kdsr/dataset.py`."""
