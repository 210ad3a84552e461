"""The training recipe end to end on a tiny synthetic dataset with real (dissected) toy features: outputs,
distillation terms, the async parameter groups, exact resume, feature-mismatch refusal, re-evaluation."""

import json
import re

import numpy as np
import polars as pl
import pytest
import torch
from accelerate.state import AcceleratorState

from feature_store.store import FeatureStore, StoreError
from jobs import evaluate as evaluate_job
from jobs import train as train_job
from kdsr.config import load_config
from kdsr.paths import REPO_ROOT
from toydata import synthetic, toy_features
from trainer import train as recipe_module
from trainer.config import TrainConfig
from trainer.features import scale_features
from trainer.optim import build_optimizers, modality_lr
from trainer.student import DistillHeads, Student

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_accelerator():
    """Accelerate keeps process-wide state; each in-process run starts from a clean one."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data = synthetic(root / "data", n_users=60, n_items=40)
    feats = toy_features(data, root / "feat", mask_every=9)
    return {"data": str(data), "features": str(feats), "root": root}


def write_cfg(path, toy, **extra):
    cfg = {
        "dataset": toy["data"],
        "out_dir": str(path / "run"),
        "seed": 3,
        "epochs": 2,
        "num_workers": 0,
        "progress": False,
        "model": {"hidden": 16, "n_layers": 1, "n_heads": 1, "dropout": 0.2, "max_len": 8},
        "modalities": [{"name": "text", "features": toy["features"], "weight_hol": 1.0, "weight_code": 0.5}],
        "optim": {"batch_size": 8, "lr": 0.01},
        "eval": {"ks": [5, 10, 20]},
    }
    for key, value in extra.items():
        node = cfg
        *head, last = key.split(".")
        for h in head:
            node = node[h]
        node[last] = value
    import yaml

    (path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(path / "cfg.yaml")


def run(cfg_path, *overrides):
    AcceleratorState._reset_state(True)
    return train_job.main([cfg_path, *overrides])


def test_training_writes_outputs_and_distils(tmp_path, toy, capsys):
    cfg = write_cfg(tmp_path, toy, epochs=4, num_workers=1)
    assert run(cfg) == 0
    out = tmp_path / "run"
    m = json.loads((out / "metrics.json").read_text())
    hist = m["valid_history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert m["selected_epoch"] == int(np.argmax([h["ndcg@10"] for h in hist]))
    assert m["best_valid_ndcg@10"] == max(h["ndcg@10"] for h in hist)
    assert set(m["test"]) == {f"{n}@{k}" for n in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    assert m["counts"]["eval_users"] == {"valid": 60, "test": 60} and m["world_size"] == 1
    assert m["counts"]["eval_rows_gathered"] == {"valid": 60, "test": 60}
    # every loss term is recorded and the training loss goes down
    for term in ("loss/rec", "loss/hol/text", "loss/code/text"):
        assert all(np.isfinite(h[term]) for h in hist)
    assert hist[-1]["loss/rec"] < hist[0]["loss/rec"]
    assert hist[-1]["loss/hol/text"] < hist[0]["loss/hol/text"]
    # gradient clipping is measured: the mean pre-clip norm and the fraction of steps it shrank
    assert all(h["grad_norm"] > 0 and 0 <= h["clipped"] <= 1 for h in hist)
    # the toy sequences are learnable: far better than the random baseline (hr@10 = 10/40)
    assert m["test"]["hr@10"] > 0.4
    assert (out / "config.yaml").exists() and (out / "best" / "model.safetensors").exists()
    assert (out / "checkpoints" / "last" / "model.safetensors").exists()
    assert list((out / "tb").rglob("events.out.tfevents*"))
    # kdsr evaluate re-evaluates the selected checkpoint and gets the same test numbers
    AcceleratorState._reset_state(True)
    capsys.readouterr()
    assert evaluate_job.main([str(out)]) == 0
    again = json.loads((out / "evaluate.json").read_text())
    assert again["test"] == pytest.approx(m["test"], abs=1e-6)
    assert json.loads(capsys.readouterr().out) == again
    # only the evaluation may be overridden: anything else is a config error naming the override
    assert evaluate_job.main([str(out), "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "may be overridden, got optim.lr=0.1" in err and "Traceback" not in err


def test_async_parameter_groups_and_schedule(toy):
    cfg = load_config(TrainConfig, write_cfg(toy["root"], toy), ["async_step.milestones=[2,4]", "async_step.ramp=true"])
    feats = {"text": torch.zeros(41, 16)}
    model = Student(40, cfg.model, feats, {"text": DistillHeads(holistic=True, code=True)}, {"text": 6}, cfg.distill)
    (opt,) = build_optimizers(model, cfg)
    main, slow = opt.param_groups
    assert main["name"] == "main" and slow["name"] == "modality"
    assert [id(p) for p in slow["params"]] == [id(model.modality_tables["text"])]
    assert len(main["params"]) + 1 == len(list(model.parameters()))
    assert main["lr"] == 0.01 and slow["lr"] == pytest.approx(0.01 / 4)
    assert [modality_lr(cfg, e) for e in range(6)] == pytest.approx([2.5e-3, 2.5e-3, 5e-3, 5e-3, 1e-2, 1e-2])
    off = cfg.model_copy(update={"async_step": cfg.async_step.model_copy(update={"enabled": False})})
    assert modality_lr(off, 0) == 0.01
    # the released form: lr / gamma^len(schedule), constant (its schedule [5, 10]: lr / 4 at every epoch)
    released = load_config(TrainConfig, write_cfg(toy["root"], toy))
    assert [modality_lr(released, e) for e in (0, 5, 10, 50)] == pytest.approx([2.5e-3] * 4)
    three = load_config(TrainConfig, write_cfg(toy["root"], toy), ["async_step.milestones=[1,2,3]"])
    assert modality_lr(three, 0) == pytest.approx(0.01 / 8)


def test_async_rate_is_applied_during_training(tmp_path, toy):
    cfg = write_cfg(tmp_path, toy, epochs=1, max_steps=2)
    recipe = recipe_module.TrainRecipe(load_config(TrainConfig, cfg))
    recipe.setup()
    before = recipe.accelerator.unwrap_model(recipe.model).modality_tables["text"].detach().clone()
    recipe.train()
    lrs = {g["name"]: g["lr"] for g in recipe.optimizers[0].param_groups}
    assert lrs == pytest.approx({"main": 1e-2, "modality": 2.5e-3})
    after = recipe.accelerator.unwrap_model(recipe.model).modality_tables["text"].detach()
    assert not torch.equal(before, after)
    recipe.cleanup()


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax"])
def test_resumed_run_ends_with_the_same_metrics(tmp_path, toy, monkeypatch, capsys, loss):
    # 60 windows / batch 8 = 8 steps per epoch; the "killed" run dies at step 5, its last checkpoint is
    # at step 3 (mid-epoch), so steps 4-5 are redone after the resume (with the same sampled negatives).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_cfg(tmp_path / "a", toy, num_workers=1, **{"optim.loss": loss})
    b = write_cfg(tmp_path / "b", toy, num_workers=1, checkpoint_every=3, **{"optim.loss": loss})
    assert run(a) == 0
    capsys.readouterr()
    monkeypatch.setenv("KDSR_TEST_STOP_AFTER", "5")  # the test hook: a kill after step 5
    assert run(b) == 0
    assert json.loads(capsys.readouterr().out)["stopped_at_step"] == 5
    monkeypatch.delenv("KDSR_TEST_STOP_AFTER")
    state = json.loads((tmp_path / "b" / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    assert not (tmp_path / "b" / "run" / "metrics.json").exists()
    assert run(b) == 0
    ma = json.loads((tmp_path / "a" / "run" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    strip = lambda hist: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in hist]  # noqa: E731
    assert strip(mb["valid_history"]) == strip(ma["valid_history"])
    assert mb["test"] == ma["test"]


def test_resume_with_a_different_config_is_refused(tmp_path, toy, capsys):
    cfg = write_cfg(tmp_path, toy, epochs=1, max_steps=1)
    assert run(cfg) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(tmp_path / "run") and summary["selected_epoch"] == 0
    assert set(summary["test"]) == {f"{n}@{k}" for n in ("hr", "ndcg", "mrr") for k in (5, 10, 20)}
    assert run(cfg, "optim.lr=0.02") == 2
    err = capsys.readouterr().err
    assert "cannot resume, config differs from the saved run in: optim" in err and "Traceback" not in err


def test_resume_after_the_inputs_were_rebuilt_is_refused(tmp_path, toy, capsys):
    feats = toy_features(toy["data"], tmp_path / "feat", seed=0)
    cfg = write_cfg(tmp_path, toy, epochs=1, max_steps=1, modalities=[{"name": "text", "features": str(feats)}])
    assert run(cfg) == 0
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["inputs"]["text.dissect.seed"] == 0 and state["inputs"]["dataset.stats_sha256"]
    # the same config, the dissection rebuilt under the same path with another seed
    assert toy_features(toy["data"], tmp_path / "feat", seed=1) == feats
    capsys.readouterr()
    assert run(cfg) == 2
    assert re.search(
        r"cannot resume, inputs differ .* in: .*text\.dissect\.config, text\.dissect\.seed", capsys.readouterr().err
    )


def test_a_dataset_without_validation_cases_is_refused(tmp_path, capsys):
    data = synthetic(tmp_path / "data", n_users=20, n_items=30)
    inter = pl.read_parquet(data / "interactions.parquet")  # as a ratio split with valid_ratio 0 leaves it
    inter.with_columns(pl.col("split").replace("valid", "train")).write_parquet(data / "interactions.parquet")
    cfg = write_cfg(tmp_path, {"data": str(data), "features": ""}, modalities=[])
    assert run(cfg) == 2
    assert f"model selection needs a validation split: {data} has no valid cases" in capsys.readouterr().err


def test_teacher_targets_in_workers_or_in_the_step_train_identically(tmp_path, toy):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_cfg(tmp_path / "a", toy, epochs=1, num_workers=1, teacher_in_workers=True)
    b = write_cfg(tmp_path / "b", toy, epochs=1, num_workers=0, teacher_in_workers=False)
    assert run(a) == 0 and run(b) == 0
    ma, mb = (json.loads((tmp_path / x / "run" / "metrics.json").read_text()) for x in "ab")
    assert ma["test"] == mb["test"]


@pytest.mark.parametrize(
    "setting, workers, device, cores, threads, procs, expected",
    [
        (None, 1, "cpu", 2, 2, 1, False),  # this 2-core box: a worker would take a core from the step
        (None, 1, "cpu", 4, 2, 1, True),
        (None, 2, "cpu", 8, 2, 2, True),
        (None, 2, "cpu", 8, 3, 2, False),
        (None, 1, "cuda", 2, 2, 1, True),
        (None, 0, "cuda", 16, 2, 1, False),  # no workers: nowhere to put them but the step
        (True, 1, "cpu", 2, 2, 1, True),  # an explicit setting wins
        (False, 1, "cuda", 16, 2, 1, False),
    ],
)
def test_teacher_placement_auto(monkeypatch, setting, workers, device, cores, threads, procs, expected):
    from types import SimpleNamespace

    monkeypatch.setattr(recipe_module.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(recipe_module.torch, "get_num_threads", lambda: threads)
    cfg = SimpleNamespace(teacher_in_workers=setting, num_workers=workers)
    acc = SimpleNamespace(device=torch.device(device), num_processes=procs)
    assert recipe_module.resolve_teacher_placement(cfg, acc) is expected


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.backbone=bert4rec"],
        ["model.backbone=gru4rec", "optim.loss=bce", "optim.n_negatives=4", "model.fusion=concat"],
        ["distill.holistic=kl", "model.fusion=sum", "eval.exclude_history=true", "eval.sampled_negatives=10"],
        ["model.backbone=bert4rec", "optim.loss=sampled_softmax", "optim.sampled.n_negatives=16"],
        [
            "optim.loss=sampled_softmax",
            "optim.sampled.popularity_exponent=0.75",
            "optim.sampled.in_batch=true",
            "model.score_items=id",
            "eval.item_chunk=7",
            "eval.sample_users=20",
        ],
        ["optim.loss=sampled_softmax", "optim.sparse_tables=false", "optim.sampled.logq_correction=false"],
        [
            "model.feature_scaling=standardize",
            "distill.holistic_mean=sequences_with_pairs",
            "distill.unique_items=false",
            "optim.clip_norm=null",
        ],
    ],
)
def test_variants_train(tmp_path, toy, overrides):
    cfg = write_cfg(tmp_path, toy, epochs=1)
    assert run(cfg, *overrides) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in m["test"].values())
    assert ("SAMPLED" in m["protocol"]["ranking"]) == any("eval.sampled_negatives" in o for o in overrides)


def test_sampled_softmax_step_updates_only_the_rows_it_used(toy):
    """Sparse item tables: a step leaves the rows it did not look up exactly as they were (a lazy Adam)."""
    cfg = load_config(TrainConfig, write_cfg(toy["root"], toy), ["optim.loss=sampled_softmax"])
    model = Student(40, cfg.model, {"text": torch.randn(41, 16)}, {}, {}, cfg.distill, "sampled_softmax", True)
    opts = build_optimizers(model, cfg)
    assert [type(o).__name__ for o in opts] == ["Adam", "SparseAdam"]
    # TensorBoard's learning rates come from both: the slow modality group lives in the SparseAdam only
    assert (
        recipe_module.learning_rates(opts)
        == {"lr/main": cfg.optim.lr, "lr/modality": modality_lr(cfg, 0)}
        != recipe_module.learning_rates(opts[:1])
    )
    before = model.id_emb.weight.detach().clone(), model.modality_tables["text"].detach().clone()
    inputs = torch.tensor([[1, 2, 3, 0]])
    batch = {
        "inputs": inputs,
        "targets": torch.tensor([[2, 3, 4, 0]]),
        "items": inputs,
        "negative_ids": torch.tensor([5, 6]),
        "negative_log_q": torch.zeros(2),
        "target_log_q": torch.zeros(1, 4),
    }
    model(batch)["rec"].backward()
    assert model.id_emb.weight.grad.is_sparse
    for o in opts:
        o.step()
    used = torch.tensor([1, 2, 3, 4, 5, 6])
    untouched = torch.ones(41, dtype=torch.bool)
    untouched[used] = False
    for table, old in zip((model.id_emb.weight, model.modality_tables["text"]), before):
        assert torch.equal(table[untouched], old[untouched])
        assert not torch.equal(table[used], old[used])


def test_scale_limits_are_config_errors_naming_the_key(tmp_path, toy, monkeypatch, capsys):
    cfg = write_cfg(tmp_path, toy, epochs=1)
    assert run(cfg, "optim.loss=sampled_softmax", "optim.sampled.n_negatives=41") == 2
    err = capsys.readouterr().err
    assert "optim.sampled.n_negatives=41 is larger than the catalog (40 items)" in err and "Traceback" not in err
    for bad in ("optim.sampled.popularity_exponent=-1", "eval.item_chunk=0", "optim.sampled.n_negatives=0"):
        assert run(cfg, bad) == 2
        assert bad.split("=")[0].split(".")[-1] in capsys.readouterr().err
    # a full softmax that would not fit: refused before training, with the estimate and the fix
    from trainer import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1_000_000)
    assert run(cfg) == 2
    err = capsys.readouterr().err
    assert "optim.loss=ce over 40 items needs about" in err and "set optim.loss=sampled_softmax" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ce_memory_estimate_grows_linearly_with_the_catalog():
    from trainer.memory import ce_step_bytes

    one = ce_step_bytes(100_000, 128, [128], "gate")
    assert ce_step_bytes(1_000_000, 128, [128], "gate") == 10 * one
    assert ce_step_bytes(100_000, 128, [], "gate") < one


def test_features_in_another_item_order_are_refused(tmp_path, toy):
    src = FeatureStore.open(toy["features"])
    ids = src.item_ids()
    for name, bad_ids in {"shuffled": ids[::-1], "short": ids[:-1]}.items():
        store = FeatureStore.create(tmp_path / f"{name}.zarr", bad_ids, 16, shard_size=len(bad_ids))
        store.write_shard(0, np.ones((len(bad_ids), 16), np.float32))
        (tmp_path / name).mkdir()
        cfg = write_cfg(tmp_path / name, toy)
        cfg = load_config(TrainConfig, cfg, [f"modalities=[{{name: text, features: {store.path}}}]"])
        recipe = recipe_module.TrainRecipe(cfg)
        with pytest.raises(StoreError, match="item order differs" if name == "shuffled" else "store has 39 items"):
            recipe.setup()
        AcceleratorState._reset_state(True)


def test_every_shipped_config_validates():
    paths = sorted((REPO_ROOT / "configs" / "train").glob("*.yaml"))
    assert len(paths) >= 6
    for p in paths:
        cfg = load_config(TrainConfig, p)
        assert cfg.out_dir and cfg.dataset
        assert "accelerate launch" in p.read_text().splitlines()[0] or "kdsr train" in p.read_text()[:400]


def test_feature_scaling_keeps_zero_rows_and_scales_the_rest():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(6, 4, generator=g) * torch.tensor([0.1, 1.0, 3.0, 10.0]) + 2.0
    table[0] = 0  # padding
    table[3] = 0  # an item without content
    assert scale_features(table, "none") is table
    l2 = scale_features(table, "l2")
    rows = [1, 2, 4, 5]
    assert torch.allclose(l2[rows].norm(dim=1), torch.ones(4))
    std = scale_features(table, "standardize")
    assert torch.allclose(std[rows].mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(std[rows].std(0), torch.ones(4), atol=1e-5)
    for out in (l2, std):  # padding and content-less rows stay zero rows (masked out of every loss)
        assert out[0].eq(0).all() and out[3].eq(0).all()
    with pytest.raises(ValueError, match="unknown feature scaling 'max'"):
        scale_features(table, "max")


def test_distillation_variants_onto_id_and_fading_weights(tmp_path, toy):
    """distill.onto_id adds the same terms on the ID embeddings (they fall as they train); distill.fade_epochs
    weights distillation 1, 1/2, 0 over epochs 0, 1, 2 of a 2-epoch fade."""
    cfg = write_cfg(tmp_path, toy, epochs=3)
    assert run(cfg, "distill.onto_id=true", "distill.fade_epochs=2") == 0
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["valid_history"]
    for term in ("loss/hol/id<-text", "loss/code/id<-text", "loss/hol/text", "loss/code/text"):
        assert all(np.isfinite(h[term]) for h in hist), term
    assert hist[1]["loss/hol/id<-text"] < hist[0]["loss/hol/id<-text"]  # the ID table learns the correlations
    recipe = recipe_module.TrainRecipe(load_config(TrainConfig, cfg, ["distill.fade_epochs=2"]))
    assert [recipe.distill_factor(e) for e in range(4)] == [1.0, 0.5, 0.0, 0.0]
    assert recipe_module.TrainRecipe(load_config(TrainConfig, cfg)).distill_factor(7) == 1.0
    # the ID heads exist only when asked for
    model = Student(
        40,
        load_config(TrainConfig, cfg).model,
        {"text": torch.randn(41, 16)},
        {"text": DistillHeads(True, True)},
        {"text": 5},
        load_config(TrainConfig, cfg).distill,
    )
    assert not model.id_holistic_heads and not model.id_code_heads


def test_knn_of_the_tables_reads_the_cases_the_run_was_measured_on(tmp_path, toy, monkeypatch):
    """eval.sample_users: the next-item kNN of a run's modality tables (its report's retention) scores the same
    sampled cases as the run's own metrics, not every user (at 1M users that would not finish)."""
    from trainer import retention
    from trainer.evaluate import evaluate_config

    cfg = write_cfg(tmp_path, toy, epochs=1)
    assert run(cfg, "eval.sample_users=20") == 0
    AcceleratorState._reset_state(True)
    recipe = recipe_module.TrainRecipe(evaluate_config(tmp_path / "run", []))
    recipe.setup(write_config=False)
    cases = recipe.eval_loaders["valid"].dataset
    recipe.cleanup()
    assert len(cases) == 20
    scored = []
    monkeypatch.setattr(retention, "next_item_knn", lambda table, hist, rel: scored.append((hist, rel)) or 0.0)
    assert set(retention.run_knn(retention.read_run(tmp_path / "run"))) == {"stored text", "trained text"}
    assert len(scored) == 2 and all(len(h) == len(r) == 20 for h, r in scored)
    hist, rel = scored[0]
    assert all(np.array_equal(a, b) for a, b in zip(hist + rel, cases.histories + cases.relevant))
