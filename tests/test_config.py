"""kdsr/config.py: typed YAML configs fail at load with the file and the dotted key; every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.stages import SCHEMAS, schema_for
from kdsr.config import ConfigError, load_config, parse_override, save_config
from kdsr.paths import REPO_ROOT
from prepare.config import PrepareConfig

MINIMAL = """
name: t
output_dir: runs/data/t
table:
  interactions: ${KDSR_DATA_DIR:-../shared/data}/amazon-beauty/interactions.parquet
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(PrepareConfig, write(tmp_path, MINIMAL))
    assert cfg.filter.kcore == 5 and cfg.split.protocol == "leave_one_out" and cfg.policy.duplicates == "error"
    assert cfg.source_kind == "table" and cfg.table.columns.user == "user_id"


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "filter:\n  kcores: 3\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml") as e:
        load_config(PrepareConfig, path)
    assert "filter.kcores: unknown key" in str(e.value)


def test_missing_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: t\n", ""))
    with pytest.raises(ConfigError, match=r"cfg\.yaml") as e:
        load_config(PrepareConfig, path)
    assert "name: missing required key" in str(e.value)


def test_wrong_type_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "filter:\n  kcore: five\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml") as e:
        load_config(PrepareConfig, path)
    assert "filter.kcore" in str(e.value) and "'five'" in str(e.value)


def test_bad_choice_and_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="split.protocol"):
        load_config(PrepareConfig, write(tmp_path, MINIMAL + "split:\n  protocol: random\n"))
    with pytest.raises(ConfigError, match="exactly one source"):
        load_config(PrepareConfig, write(tmp_path, MINIMAL + "recbole_split:\n  path: x\n"))
    with pytest.raises(ConfigError, match="exactly one source"):
        load_config(PrepareConfig, write(tmp_path, "name: t\noutput_dir: o\n"))
    with pytest.raises(ConfigError, match="needs table.columns.rating"):
        load_config(PrepareConfig, write(tmp_path, MINIMAL + "filter:\n  rating_threshold: 4\n"))
    with pytest.raises(ConfigError, match="valid_ratio \\+ split.test_ratio"):
        load_config(PrepareConfig, write(tmp_path, MINIMAL + "split:\n  test_ratio: 0.6\n  valid_ratio: 0.5\n"))


def test_override_of_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"cfg\.yaml") as e:
        load_config(PrepareConfig, path, ["filter.kcor=3"])
    assert "unknown key 'filter.kcor'" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(PrepareConfig, path, ["nope=1"])


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_config(
        PrepareConfig,
        path,
        ["split.protocol=ratio", "filter.kcore=0", "table.columns.rating=rating", "filter.rating_threshold=4"],
    )
    assert cfg.split.protocol == "ratio" and cfg.filter.kcore == 0 and cfg.table.columns.rating == "rating"
    assert cfg.filter.rating_threshold == 4.0
    with pytest.raises(ConfigError, match="filter.kcore"):
        load_config(PrepareConfig, path, ["filter.kcore=-1"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a.b=3", (["a", "b"], 3)),
        ("x=null", (["x"], None)),
        ("x=[1, 2]", (["x"], [1, 2])),
        ("x=true", (["x"], True)),
        ("x=0.5", (["x"], 0.5)),
        ("x=a=b", (["x"], "a=b")),
        ("x=", (["x"], "")),
        ('x="2023"', (["x"], "2023")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1", ".a=1"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_env_expansion(tmp_path, monkeypatch):
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("KDSR_DATA_DIR", "/somewhere/data")
    assert load_config(PrepareConfig, path).table.interactions == "/somewhere/data/amazon-beauty/interactions.parquet"
    monkeypatch.delenv("KDSR_DATA_DIR")
    assert load_config(PrepareConfig, path).table.interactions == "../shared/data/amazon-beauty/interactions.parquet"
    bad = write(tmp_path, MINIMAL.replace("${KDSR_DATA_DIR:-../shared/data}", "${KDSR_SURELY_UNSET_VAR}"))
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*KDSR_SURELY_UNSET_VAR"):
        load_config(PrepareConfig, bad)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(PrepareConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PrepareConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PrepareConfig, write(tmp_path, "a: [1,\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PrepareConfig, write(tmp_path, MINIMAL), ["split.protocol=temporal"])
    saved = save_config(cfg, tmp_path / "out")
    assert load_config(PrepareConfig, saved) == cfg


SHIPPED = sorted((REPO_ROOT / "configs").glob("*/*.yaml"))


def test_prepare_configs_are_shipped():
    names = {p.stem for p in SHIPPED if p.parent.name == "prepare"}
    assert {"beauty", "ml-1m", "ml-100k", "scientific", "scientific-mm"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_every_shipped_config_loads_with_its_schema(path):
    stage = path.parent.name
    assert stage in SCHEMAS, f"{path}: stage {stage!r} has no schema registered in jobs/stages.py"
    cfg = load_config(schema_for(stage), path)
    first = path.read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{path}: needs a header comment with the launch command"
    assert f"kdsr {stage} configs/{stage}/{path.name}" in path.read_text(), (
        f"{path}: header must show its launch command"
    )
    if stage == "prepare":
        assert cfg.output_dir == f"runs/data/{cfg.name}"
    if stage == "sweep":  # every trial's train config validates (the base, relative to the repository)
        from trainer.sweep import plan_trials

        cfg.base = str(REPO_ROOT / cfg.base)
        assert plan_trials(cfg, str(path))


def test_unregistered_stage_is_refused():
    with pytest.raises(KeyError, match="jobs/stages.py"):
        schema_for("no-such-stage")


def test_override_indexes_lists_and_names_bad_indices(tmp_path):
    from trainer.config import TrainConfig

    path = tmp_path / "t.yaml"
    path.write_text("dataset: d\nout_dir: o\nmodalities:\n  - {name: text, features: a.zarr}\n")
    cfg = load_config(TrainConfig, path, ["modalities.0.features=b.zarr", "modalities.0.weight_hol=0.5"])
    assert cfg.modalities[0].features == "b.zarr" and cfg.modalities[0].weight_hol == 0.5
    with pytest.raises(ConfigError, match=r"t\.yaml.*modalities has 1 entries, no index '1'"):
        load_config(TrainConfig, path, ["modalities.1.features=c.zarr"])
    with pytest.raises(ConfigError, match=r"unknown key 'modalities\.0\.colour'"):
        load_config(TrainConfig, path, ["modalities.0.colour=red"])


def test_override_of_a_string_field_keeps_the_text(tmp_path):
    from feature_store.config import EncodeConfig

    path = tmp_path / "e.yaml"
    path.write_text("dataset: d\nencoder: {model: m}\noutput: {path: p}\n")
    cfg = load_config(EncodeConfig, path, ["encoder.template={title} by {brand}", "output.shard_size=64"])
    assert cfg.encoder.template == "{title} by {brand}" and cfg.output.shard_size == 64
