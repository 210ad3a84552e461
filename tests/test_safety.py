"""Nothing lost: a stage replaces only what kdsr itself wrote, never a folder holding (or held by) its inputs, and a
kill in the middle of a checkpoint swap still resumes from the last complete checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from accelerate.state import AcceleratorState

from dissect.config import DissectConfig
from dissect.run import run_dissect
from feature_store.config import ImportConfig, OutputConfig
from feature_store.importer import run_import
from feature_store.store import FeatureStore, StoreError
from kdsr.config import load_config
from kdsr.errors import KdsrError
from prepare.config import PrepareConfig
from prepare.run import run_prepare
from toydata import catalog_only, items_frame, synthetic
from trainer import train as recipe_module
from trainer.config import TrainConfig


def user_folder(path: Path) -> Path:
    """A folder someone else made, with a file that must survive every refusal."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def survived(path: Path) -> bool:
    return (path / "notes.txt").read_text() == "mine"


def small_store(path: Path, n: int = 40, dim: int = 16) -> Path:
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    store = FeatureStore.create(path, [f"i{k}" for k in range(n)], dim, shard_size=n)
    store.write_shard(0, x)
    return path


# ---- the store (what `kdsr encode` creates and overwrites through) ---------------------------------------
@pytest.mark.parametrize("kind", ["plain folder", "zarr group not ours", "our store plus a user file"])
def test_store_overwrite_refuses_what_kdsr_did_not_write(tmp_path, kind):
    path = tmp_path / "out"
    if kind == "plain folder":
        user_folder(path)
    elif kind == "zarr group not ours":
        zarr.open_group(str(path), mode="w").attrs["owner"] = "someone else"
        (path / "notes.txt").write_text("mine")
    else:
        small_store(path)
        (path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=rf"{path}: exists and is not a kdsr feature store .*never removed"):
        FeatureStore.create(path, ["a", "b"], 2, overwrite=True)
    assert survived(path)
    # a store kdsr wrote, and nothing else, is replaced
    (path / "notes.txt").unlink()
    if kind == "our store plus a user file":
        assert FeatureStore.create(path, ["a", "b"], 2, overwrite=True).n_items == 2


@pytest.mark.parametrize("where", ["is", "sits inside", "contains"])
def test_store_refuses_an_output_that_is_inside_or_around_an_input(tmp_path, where):
    src = small_store(tmp_path / "in" / "src.zarr")
    out = {"is": src, "sits inside": src / "sub.zarr", "contains": tmp_path / "in"}[where]
    with pytest.raises(StoreError, match=rf"{out}: the output {where} the input {src}"):
        FeatureStore.create(out, ["a", "b"], 2, overwrite=True, inputs=[None, str(src)])
    assert FeatureStore.open(src).is_complete()


# ---- kdsr import -----------------------------------------------------------------------------------------
@pytest.fixture
def npy_source(tmp_path) -> dict:
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "f.npy", np.arange(8, dtype=np.float32).reshape(4, 2))
    (src / "ids.txt").write_text("a\nb\nc\nd\n")
    dataset = catalog_only(tmp_path / "data", items_frame(list("abcd")))
    return {"source": str(src / "f.npy"), "ids": str(src / "ids.txt"), "dataset": str(dataset.path)}


def test_import_refuses_to_replace_a_folder_that_is_not_a_store(tmp_path, npy_source):
    out = user_folder(tmp_path / "out")
    with pytest.raises(KdsrError, match=rf"{out}: exists and is not a kdsr feature store"):
        run_import(ImportConfig(**npy_source, output=OutputConfig(path=str(out), overwrite=True)))
    assert survived(out)


@pytest.mark.parametrize("where", ["sits inside", "contains"])
def test_import_refuses_an_output_inside_or_around_its_inputs(tmp_path, npy_source, where):
    out = {"sits inside": Path(npy_source["dataset"]) / "features", "contains": tmp_path / "src"}[where]
    with pytest.raises(KdsrError, match=rf"{out}: the output {where} the input"):
        run_import(ImportConfig(**npy_source, output=OutputConfig(path=str(out), overwrite=True)))
    assert Path(npy_source["source"]).exists() and (Path(npy_source["dataset"]) / "stats.json").exists()


# ---- kdsr dissect ----------------------------------------------------------------------------------------
def dissect_cfg(features: Path, out: Path, **kw) -> DissectConfig:
    raw = {
        "features": str(features),
        "output": str(out),
        "reduce": {"method": "none"},
        "facets": {"mode": "chunks", "n_facets": 4},
        "codebook": {"n_codes": 4, "random_pairs": 500, "n_init": 1},
        **kw,
    }
    return DissectConfig.model_validate(raw)


def test_dissect_refuses_an_existing_output_unless_overwrite(tmp_path):
    src, out = small_store(tmp_path / "f.zarr"), tmp_path / "d.zarr"
    run_dissect(dissect_cfg(src, out))
    with pytest.raises(StoreError, match=rf"{out}: already exists; set overwrite=true"):
        run_dissect(dissect_cfg(src, out))  # the default
    assert FeatureStore.open(out).is_complete()
    assert run_dissect(dissect_cfg(src, out, overwrite=True))["output"] == str(out)


def test_dissect_refuses_to_replace_a_folder_that_is_not_a_store(tmp_path):
    src, out = small_store(tmp_path / "f.zarr"), user_folder(tmp_path / "d.zarr")
    with pytest.raises(StoreError, match=rf"{out}: exists and is not a kdsr feature store"):
        run_dissect(dissect_cfg(src, out, overwrite=True))
    assert survived(out)


@pytest.mark.parametrize("where", ["sits inside", "contains"])
def test_dissect_refuses_an_output_inside_or_around_its_input(tmp_path, where):
    src = small_store(tmp_path / "in" / "f.zarr")
    out = {"sits inside": src / "d.zarr", "contains": tmp_path / "in"}[where]
    with pytest.raises(StoreError, match=rf"{out}: the dissection output {where} the input store"):
        run_dissect(dissect_cfg(src, out, overwrite=True))
    assert FeatureStore.open(src).is_complete() and not (src / "d.zarr").exists()


# ---- kdsr prepare ----------------------------------------------------------------------------------------
def prepare_cfg(interactions: Path, out: Path) -> PrepareConfig:
    return PrepareConfig.model_validate(
        {
            "name": "tiny",
            "output_dir": str(out),
            "table": {"interactions": str(interactions)},
            "filter": {"kcore": 0, "require_text": False},
        }
    )


def tiny_csv(path: Path) -> Path:
    rows = [f"{u},{i},{t}" for u in range(1, 6) for t, i in enumerate(range(u, u + 4))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


def test_prepare_refuses_to_replace_folders_it_did_not_write(tmp_path):
    csv = tiny_csv(tmp_path / "src" / "inter.csv")
    ours = tmp_path / "ours"
    run_prepare(prepare_cfg(csv, ours))
    assert run_prepare(prepare_cfg(csv, ours))["n_interactions"] == 20  # its own output is replaced
    out = user_folder(tmp_path / "theirs")
    with pytest.raises(KdsrError, match=rf"{out}: exists and is not a dataset `kdsr prepare` wrote .*output_dir"):
        run_prepare(prepare_cfg(csv, out))
    assert survived(out)
    # a dataset folder with something added (images beside the tables): not only ours any more
    (ours / "images").mkdir()
    with pytest.raises(KdsrError, match=rf"{ours}: exists and is not a dataset .*images"):
        run_prepare(prepare_cfg(csv, ours))
    assert (ours / "images").is_dir()
    # <output_dir>.tmp is the build folder: removed only when it is ours
    tmp = user_folder(tmp_path / "new.tmp")
    with pytest.raises(KdsrError, match=rf"{tmp}: is not the build folder of output_dir"):
        run_prepare(prepare_cfg(csv, tmp_path / "new"))
    assert survived(tmp)
    (tmp / "notes.txt").unlink()  # what a killed run leaves there is ours, and cleared
    (tmp / "items.parquet").write_text("half")
    (tmp / ".config.yaml.tmp-123").write_text("half")
    run_prepare(prepare_cfg(csv, tmp_path / "new"))
    assert not tmp.exists() and (tmp_path / "new" / "stats.json").exists()


def test_prepare_refuses_an_output_inside_or_around_its_sources(tmp_path):
    csv = tiny_csv(tmp_path / "data" / "inter.csv")
    with pytest.raises(KdsrError, match=rf"{tmp_path / 'data'}: output_dir contains the source {csv}"):
        run_prepare(prepare_cfg(csv, tmp_path / "data"))
    assert csv.exists()
    from prepare.output import check_replaceable

    folder = tmp_path / "recbole"
    cfg = PrepareConfig.model_validate(
        {"name": "r", "output_dir": str(folder / "out"), "recbole_split": {"path": str(folder)}}
    )
    with pytest.raises(KdsrError, match=rf"{folder / 'out'}: output_dir sits inside the source {folder}"):
        check_replaceable(cfg, folder / "out", folder / "out.tmp")


# ---- the checkpoint swap ---------------------------------------------------------------------------------
class Killed(BaseException):
    """A simulated kill: no `except Exception` stops it."""


@pytest.fixture
def fresh_accelerator():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_kill_mid_swap_resumes_from_the_last_complete_checkpoint(tmp_path, monkeypatch, fresh_accelerator):
    data = synthetic(tmp_path / "data", n_users=60, n_items=40)
    cfg = {
        "dataset": str(data),
        "out_dir": str(tmp_path / "run"),
        "epochs": 1,
        "num_workers": 0,
        "progress": False,
        "checkpoint_every": 3,  # checkpoints at steps 3 and 6, ..., and at the epoch's end
        "model": {"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 8},
        "modalities": [],
        "optim": {"batch_size": 8, "lr": 0.01},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    real_rename, swaps = Path.rename, []

    def rename(self, target):
        if self.name == "tmp" and Path(target).name == "last":
            swaps.append(self)
            if len(swaps) == 2:  # the step-6 checkpoint: killed after the old `last` went, before tmp came in
                raise Killed
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    recipe = recipe_module.TrainRecipe(load_config(TrainConfig, tmp_path / "cfg.yaml"))
    recipe.setup()
    with pytest.raises(Killed):
        recipe.train()
    recipe.accelerator.end_training()
    monkeypatch.setattr(Path, "rename", real_rename)
    ckpt = tmp_path / "run" / "checkpoints"
    assert not (ckpt / "last").exists()
    assert json.loads((ckpt / "tmp" / "trainer_state.json").read_text())["global_step"] == 6

    AcceleratorState._reset_state(True)
    again = recipe_module.TrainRecipe(load_config(TrainConfig, tmp_path / "cfg.yaml"))
    again.setup()
    st = again.state
    assert (st.epoch, st.step_in_epoch, st.global_step) == (0, 6, 6)  # not a silent restart at epoch 0
    assert again.train()
    again.cleanup()
    assert sorted(p.name for p in ckpt.iterdir()) == ["last"]
    final = json.loads((ckpt / "last" / "trainer_state.json").read_text())
    assert (final["epoch"], final["global_step"]) == (1, again.state.global_step) and final["global_step"] > 6
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["selected_epoch"] == 0


def test_recovery_takes_the_newest_complete_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"

    def folder(name: str, step: int | None) -> None:
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "model.safetensors").write_text(name)
        if step is not None:  # the marker, written last
            (ckpt / name / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    folder("tmp", None)  # killed while saving: incomplete
    folder("last.old", 3)
    assert recipe_module.recover_checkpoint(ckpt) == ckpt / "last"
    assert (ckpt / "last" / "model.safetensors").read_text() == "last.old"
    (ckpt / "last").rename(ckpt / "last.old")
    (ckpt / "tmp" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))  # tmp finished first
    assert recipe_module.recover_checkpoint(ckpt) == ckpt / "last"
    assert (ckpt / "last" / "model.safetensors").read_text() == "tmp"
    assert recipe_module.recover_checkpoint(tmp_path / "none") is None
