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


def test_reference_writes_keys_as_overrides_address_them_and_keeps_required_fields_comments():
    from kdsr.config import apply_overrides
    from trainer.config import TrainConfig

    text = config_docs.render()
    # a list's items and a mapping's entries are addressed as an override addresses them
    assert "| `modalities` | list of sections |" in text and "| `modalities.0.features` |" in text
    assert "| `arms` | sections by name |" in text and "| `arms.<name>.grid` |" in text
    raw = {"modalities": [{"name": "text", "features": "a"}]}
    assert apply_overrides(raw, ["modalities.0.features=b"], TrainConfig)["modalities"][0]["features"] == "b"
    # a required field (no default) keeps the comment on its line
    assert "| `dataset` | `str` | **required** | a prepared dataset folder" in text
