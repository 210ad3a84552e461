"""Teacher API against a brute-force float64 computation on a small dissection of real CLIP features:
holistic similarities, correlation-type codes, validity of padding / masked / zero / repeated items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect.config import DissectConfig
from dissect.run import run_dissect
from feature_store.store import FeatureStore, StoreError
from feature_store.teacher import Teacher

torch.set_num_threads(1)  # also what DataLoader workers run with


@pytest.fixture(scope="module")
def dissection(data_dir, tmp_path_factory) -> str:
    base = data_dir / "scientific-mm"
    pairs = [line.split("\t") for line in (base / "Scientific.item2index").read_text().splitlines()]
    ids = [a for a, _ in sorted(pairs, key=lambda p: int(p[1]))]
    x = np.fromfile(base / "Scientific.feat1CLS", "<f4").reshape(len(ids), 512)[:600].copy()
    ids = ids[:600]
    x[20] = 0  # zero row, not masked
    mask = np.ones(600, bool)
    mask[[5, 6]] = False
    root = tmp_path_factory.mktemp("teacher")
    store = FeatureStore.create(root / "text.zarr", ids, 512, shard_size=128)
    for s in range(store.n_shards):
        a, b = store.shard_rows(s)
        store.write_shard(s, x[a:b], mask=mask[a:b])
    # F = 6 does not divide d = 64: facets of 10 and 11 dims exercise the padded facet layout
    cfg = DissectConfig.model_validate(
        {
            "features": str(root / "text.zarr"),
            "output": str(root / "text.dissect.zarr"),
            "reduce": {"dim": 64},
            "facets": {"n_facets": 6},
            "codebook": {"n_codes": 12, "random_pairs": 5000, "n_init": 1},
        }
    )
    return run_dissect(cfg)["output"]


def brute_force(path: str, seqs: np.ndarray, unique: bool = True):
    """Direct float64 computation, one pair at a time; `unique`: a repeated item is a node at its first
    position only."""
    store = FeatureStore.open(path)
    x = np.vstack([np.zeros((1, store.dim)), store.read_all("float64")])
    ok = np.concatenate([[False], store.mask() & np.any(x[1:] != 0, axis=1)])
    facets = np.asarray(store.group["facets"][:])
    mu = np.asarray(store.group["centroids"][:], np.float64)
    B, L = seqs.shape
    sim = np.zeros((B, L, L))
    dist = np.full((B, L, L, len(mu)), np.nan)
    pair = np.zeros((B, L, L), bool)
    node = ok[seqs]
    if unique:
        node &= np.array([[seqs[b, i] not in seqs[b, :i] for i in range(L)] for b in range(B)])
    for b in range(B):
        for i in range(L):
            for j in range(L):
                p, q = seqs[b, i], seqs[b, j]
                if not (node[b, i] and node[b, j]):
                    continue
                sim[b, i, j] = x[p] @ x[q] / np.linalg.norm(x[p]) / np.linalg.norm(x[q])
                c = np.array(
                    [
                        x[p, facets == f]
                        @ x[q, facets == f]
                        / max(np.linalg.norm(x[p, facets == f]) * np.linalg.norm(x[q, facets == f]), 1e-12)
                        for f in range(mu.shape[1])
                    ]
                )
                dist[b, i, j] = ((c - mu) ** 2).sum(1)
                pair[b, i, j] = i != j and p != q
    return sim, dist, node, pair


def test_targets_match_brute_force(dissection):
    teacher = Teacher.from_store(dissection)
    assert (teacher.dim, teacher.n_facets, teacher.n_codes) == (64, 6, 12)
    assert teacher.features.shape == (601, 64) and not teacher.valid[0]
    assert not teacher.valid[[6, 7, 21]].any() and int(teacher.valid.sum()) == 597  # masked rows 5, 6; zero row 20
    rng = np.random.default_rng(0)
    seqs = rng.integers(1, 601, size=(5, 12))
    seqs[0, :4] = 0  # padding
    seqs[1, 3] = 6  # masked
    seqs[2, 5] = 21  # zero row
    seqs[3, 7] = seqs[3, 2]  # a repeated item: not a pair
    sim, dist, valid, pair = brute_force(dissection, seqs)
    t = teacher.targets(torch.as_tensor(seqs))
    assert t.sim.dtype == torch.float32 and t.codes.dtype == torch.long
    np.testing.assert_array_equal(t.valid.numpy(), valid)
    np.testing.assert_array_equal(t.pair_mask.numpy(), pair)
    np.testing.assert_allclose(t.sim.numpy(), sim, atol=1e-5)
    codes = t.codes.numpy()
    assert (codes[~pair] == -100).all()
    d = dist[pair]
    ours = np.take_along_axis(d, codes[pair][:, None], 1)[:, 0]
    assert np.allclose(ours, d.min(1), atol=1e-5)  # our code is a nearest centroid (ties allowed)
    assert (codes[pair] == d.argmin(1)).mean() > 0.99
    assert pair.sum() > 250
    assert not t.valid[3, 7] and t.valid[3, 2]  # the repeat is one node, at its first position
    # every position a node (unique_items=false): the repeat's pairs count again
    teacher.unique_items = False
    _, _, valid_all, pair_all = brute_force(dissection, seqs, unique=False)
    t_all = teacher.targets(torch.as_tensor(seqs))
    np.testing.assert_array_equal(t_all.valid.numpy(), valid_all)
    np.testing.assert_array_equal(t_all.pair_mask.numpy(), pair_all)
    assert pair_all.sum() > pair.sum() and t_all.valid[3, 7]


def test_dense_and_sparse_paths_agree(dissection):
    """Full sequences take the batched-matmul path, padded ones the per-pair gather: same numbers."""
    teacher = Teacher.from_store(dissection)
    seqs = torch.as_tensor(np.random.default_rng(1).integers(1, 601, size=(4, 30)))
    dense = teacher.targets(seqs)
    padded = torch.zeros(4, 200, dtype=torch.long)
    padded[:, -30:] = seqs
    sparse = teacher.targets(padded)
    assert torch.equal(sparse.codes[:, -30:, -30:], dense.codes)
    torch.testing.assert_close(sparse.sim[:, -30:, -30:], dense.sim)
    assert not sparse.pair_mask[:, :170].any()


def test_item_order_check_and_bad_input(dissection, tmp_path):
    ids = list(FeatureStore.open(dissection).item_ids())
    Teacher.from_store(dissection, dataset_item_ids=ids)
    with pytest.raises(StoreError, match="item order differs"):
        Teacher.from_store(dissection, dataset_item_ids=ids[::-1])
    plain = FeatureStore.create(tmp_path / "plain.zarr", ["a", "b"], 4)
    with pytest.raises(StoreError, match="not a dissection store"):
        Teacher.from_store(plain.path)
    with pytest.raises(ValueError, match="out of range"):
        Teacher.from_store(dissection).targets(torch.tensor([[1, 601]]))


@pytest.mark.gpu
def test_targets_on_cuda_match_cpu(dissection):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    seqs = torch.as_tensor(np.random.default_rng(2).integers(0, 601, size=(8, 20)))
    cpu = Teacher.from_store(dissection).targets(seqs)
    gpu = Teacher.from_store(dissection, device="cuda").targets(seqs)
    assert gpu.codes.is_cuda
    torch.testing.assert_close(gpu.sim.cpu(), cpu.sim, atol=1e-5, rtol=0)
    assert (gpu.codes.cpu() == cpu.codes).float().mean() > 0.99
