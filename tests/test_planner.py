"""The sharding planner on 7B/13B/70B-shaped Llama configs and typical GPU sizes (no weights loaded)."""

from __future__ import annotations

import pytest
import transformers

from feature_store.config import EncoderConfig
from feature_store.models import ResolvedModel, count_parameters
from feature_store.planner import GIB, PlanError, plan_cpu, plan_gpu, weight_bytes

LLAMA = {  # (hidden, intermediate, layers, heads, kv heads): Llama-2 7B/13B/70B
    "7b": (4096, 11008, 32, 32, 32),
    "13b": (5120, 13824, 40, 40, 40),
    "70b": (8192, 28672, 80, 64, 8),
}


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    """Parameter counts of the base models (no LM head), counted on the meta device from saved configs."""
    out = {}
    for name, (h, i, n, a, kv) in LLAMA.items():
        d = tmp_path_factory.mktemp(name)
        transformers.LlamaConfig(
            vocab_size=32000,
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
        ).save_pretrained(d)
        out[name] = count_parameters(ResolvedModel(name, str(d), None, "local", None), EncoderConfig(model=str(d)))
    return out


def test_parameter_counts_match_the_published_sizes(params):
    # Llama-2 with LM head: 6.74B, 13.02B, 68.98B; minus the 32000 x hidden head
    assert params["7b"] == 6_738_415_616 - 32000 * 4096
    assert params["13b"] == 13_015_864_320 - 32000 * 5120
    assert params["70b"] == 68_976_648_192 - 32000 * 8192


@pytest.mark.parametrize(
    "model, precision, quant, gpu_gib, n_gpus, want_k, want_actors",
    [
        ("7b", "bf16", "none", 24, 1, 1, 1),  # 12.3 GiB on a 24 GiB card (18 usable)
        ("7b", "fp32", "none", 24, 4, 2, 2),  # 24.6 GiB: two 24 GiB cards per actor
        ("7b", "bf16", "none", 80, 8, 1, 8),
        ("13b", "bf16", "none", 24, 4, 2, 2),  # 24.3 GiB > 18 usable
        ("13b", "int8", "none", 24, 4, 1, 4),  # quantized: (0.85 x 1 + 0.15 x 2) B/param = 13.9 GiB
        ("13b", "bf16", "none", 40, 8, 1, 8),
        ("70b", "bf16", "none", 80, 8, 3, 2),  # 126.5 GiB over 60 usable per card
        ("70b", "bf16", "none", 40, 8, 5, 1),
        ("70b", "int8", "none", 80, 8, 2, 4),
        ("70b", "nf4", "none", 80, 8, 1, 8),  # (0.85 x 0.5 + 0.3) B/param = 45.9 GiB
        ("70b", "nf4", "none", 24, 8, 3, 2),
    ],
)
def test_gpu_plans(params, model, precision, quant, gpu_gib, n_gpus, want_k, want_actors):
    q = quant if precision not in ("int8", "nf4") else precision
    p = "bf16" if precision in ("int8", "nf4") else precision
    plan = plan_gpu(params[model], p, q, gpu_gib, n_gpus, headroom=0.25)
    assert (plan.gpus_per_actor, plan.num_actors) == (want_k, want_actors)
    usable = gpu_gib * 0.75
    assert plan.weight_gib <= plan.gpus_per_actor * usable  # it fits
    assert plan.gpus_per_actor == 1 or plan.weight_gib > (plan.gpus_per_actor - 1) * usable  # and is minimal
    if plan.gpus_per_actor > 1:  # max_memory covers exactly the actor's GPUs and holds the weights
        assert sorted(plan.max_memory) == list(range(plan.gpus_per_actor))
        assert sum(float(v.removesuffix("GiB")) for v in plan.max_memory.values()) >= plan.weight_gib
    else:
        assert plan.max_memory is None


def test_too_big_for_the_cluster_says_what_would_fit(params):
    with pytest.raises(PlanError, match="quantization int8/nf4"):
        plan_gpu(params["70b"], "bf16", "none", 24, 4)


def test_quantization_shrinks_weights(params):
    b16, i8, n4 = (weight_bytes(params["7b"], "bf16", q) for q in ("none", "int8", "nf4"))
    assert b16 / GIB == pytest.approx(params["7b"] * 2 / GIB)
    assert n4 < i8 < 0.6 * b16


def test_user_fixed_actor_count_and_gpus(params):
    plan = plan_gpu(params["7b"], "bf16", "none", 80, 8, gpus_per_actor=2, num_actors=3)
    assert (plan.gpus_per_actor, plan.num_actors) == (2, 3)
    plan = plan_gpu(params["7b"], "bf16", "none", 80, 8, gpus_per_actor=2, num_actors=9)
    assert plan.num_actors == 4 and plan.notes


@pytest.mark.parametrize(
    "cpus, actors, threads, want_actors, want_threads",
    [
        (2, None, None, 1, 2),
        (16, None, None, 2, 8),
        (2, 2, None, 2, 1),
        (64, None, 4, 16, 4),
    ],
)
def test_cpu_plans_never_starve(cpus, actors, threads, want_actors, want_threads):
    plan = plan_cpu(cpus, actors, threads)
    assert (plan.num_actors, plan.torch_threads) == (want_actors, want_threads)
    # the actors' Ray reservation always leaves room for the driver / other Ray work
    assert plan.num_actors * plan.cpus_per_actor <= cpus - 0.5 + 1e-9


def test_cpu_plan_refuses_a_reservation_that_cannot_be_scheduled():
    with pytest.raises(PlanError, match="wait forever"):
        plan_cpu(2, num_actors=2, cpus_per_actor=1.5)
