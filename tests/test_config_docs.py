"""docs/CONFIG.md is generated from the typed schemas: it must list every registered stage and be current."""

from jobs import config_docs
from jobs.stages import SCHEMAS


def test_reference_lists_every_stage_and_key():
    text = config_docs.render()
    for stage in SCHEMAS:
        assert f"## `{stage}`" in text
    assert "| `split.protocol` |" in text and "| `distill.tau` |" in text


def test_reference_is_current():
    assert config_docs.main(["--check"]) == 0, "docs/CONFIG.md is stale: run `python -m jobs.config_docs`"
