"""The trainer on real data: Amazon Beauty prepared by the real `kdsr prepare` (leave-one-out)."""

import json

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from feature_store.store import FeatureStore, StoreError
from jobs import prepare as prepare_job
from jobs import train as train_job
from kdsr.config import load_config
from kdsr.dataset import PreparedDataset
from kdsr.paths import REPO_ROOT
from trainer.config import TrainConfig
from trainer.data import UserSequences
from trainer.train import TrainRecipe

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def beauty(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("beauty") / "data"
    assert prepare_job.main([str(REPO_ROOT / "configs/prepare/beauty.yaml"), f"output_dir={out}"]) == 0
    return PreparedDataset.open(out)


def test_training_positions_and_eval_cases_account_for_every_row(beauty):
    seqs = UserSequences.from_dataset(beauty)
    split = beauty.stats["split"]
    windows = seqs.train_windows(max_len=50, causal=True)
    # every train row but each user's first is a target exactly once: 153,551 - 22,332 on Beauty
    assert sum(len(w) - 1 for w in windows) == split["train"] - beauty.n_users
    for name in ("valid", "test"):
        hist, rel, skipped = seqs.eval_cases(name)
        assert (len(hist), skipped) == (beauty.n_users, 0)
        assert all(len(r) == 1 for r in rel)
    vh, vr, _ = seqs.eval_cases("valid")
    th, _, _ = seqs.eval_cases("test")
    # the test history is the validation history plus the validation item
    assert all(len(t) == len(v) + 1 and t[-1] == r[0] for t, v, r in zip(th[:500], vh[:500], vr[:500]))


def test_features_not_matching_beauty_are_refused(beauty, tmp_path):
    ids = beauty.item_original_ids()
    rotated = ids[1:] + ids[:1]
    store = FeatureStore.create(tmp_path / "f.zarr", rotated, 8, shard_size=len(ids))
    store.write_shard(0, np.ones((len(ids), 8), np.float32))
    cfg = TrainConfig(
        dataset=str(beauty.path),
        out_dir=str(tmp_path / "run"),
        modalities=[{"name": "text", "features": str(store.path)}],
        distill={"enabled": False},
    )
    AcceleratorState._reset_state(True)
    with pytest.raises(
        StoreError, match=f"item order differs .* at {len(ids)} rows, first at row 0 .*{rotated[0]}.*{ids[0]}"
    ):
        TrainRecipe(cfg).setup()


@pytest.mark.slow
def test_a_short_sasrec_run_on_beauty_learns(beauty, tmp_path):
    raw = yaml.safe_load((REPO_ROOT / "configs/train/beauty-sasrec.yaml").read_text())
    raw |= {
        "dataset": str(beauty.path),
        "out_dir": str(tmp_path / "run"),
        "epochs": 1,
        "max_steps": 30,
        "num_workers": 0,
        "progress": False,
        "model": {**raw["model"], "hidden": 32, "n_layers": 1},
        "optim": {"lr": 0.005},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    load_config(TrainConfig, tmp_path / "cfg.yaml")
    AcceleratorState._reset_state(True)
    assert train_job.main([str(tmp_path / "cfg.yaml")]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # every train row but each user's first is a target (as above); every user is a test case
    assert m["counts"]["train_positions"] == beauty.stats["split"]["train"] - beauty.n_users
    assert m["counts"]["eval_users"]["test"] == beauty.n_users
    # random ranking gives NDCG@10 ~ 0.0004 over 12,086 items; 30 steps already learn popularity and more
    assert m["test"]["ndcg@10"] > 0.002 and m["test"]["hr@10"] > 0.004
    assert m["valid_history"][0]["step"] == 30


@pytest.mark.parametrize("exclude", [False, True])
def test_chunked_ranking_gives_every_user_the_full_matrix_rank(beauty, exclude):
    """The item-chunked evaluation path against the (users x N) score matrix, every Beauty test user."""
    from trainer.data import EvalCases, eval_collate
    from trainer.metrics import candidate_scores, target_ranks
    from trainer.ranking import chunked_target_ranks
    from trainer.student import Student

    cfg = load_config(TrainConfig, REPO_ROOT / "configs/train/beauty-sasrec.yaml", [f"dataset={beauty.path}"])
    torch.manual_seed(0)
    model = Student(beauty.n_items, cfg.model.model_copy(update={"hidden": 32, "n_heads": 1}), {}).eval()
    hist, rel, _ = UserSequences.from_dataset(beauty).eval_cases("test")
    cases = EvalCases(hist, rel, 50)
    cand = model.candidate_table()
    n_users = 0
    for start in range(0, len(cases), 2048):
        batch = eval_collate([cases[i] for i in range(start, min(len(cases), start + 2048))])
        h = model.user_states(batch["history"], batch["lengths"])
        seen = batch["seen"] if exclude else None
        full = target_ranks(candidate_scores(h @ cand.T, seen), batch["relevant"])
        assert torch.equal(chunked_target_ranks(h, cand, batch["relevant"], seen, 1000), full)
        n_users += len(h)
    assert n_users == beauty.n_users == 22_332
