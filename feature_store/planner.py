"""How many devices one encoder actor needs, and how many actors fit.

GPU: weights take params x bytes/param (int8 = 1, nf4 = 0.5 plus the parts bitsandbytes keeps in 16 bit);
each GPU gives (1 - headroom) of its memory to weights, the rest is for activations and the CUDA context.
An actor holding k > 1 GPUs loads with device_map="auto" and a max_memory map over exactly its k GPUs
(inside a Ray actor they are cuda:0..k-1). CPU: actors take threads instead, and reserve Ray CPUs in a way
that always leaves room for other Ray work, so no configuration can starve itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kdsr.errors import KdsrError

GIB = 1 << 30
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
QUANT_BYTES_PER_PARAM = {"int8": 1.0, "nf4": 0.5}
# bitsandbytes quantizes the Linear layers only; embeddings, norms (and quantization constants) stay in
# 16 bit. 15% of the parameters at 2 bytes covers Llama-style models (embeddings ~3% at 7B, ~7% at 1B).
QUANT_UNQUANTIZED_FRACTION = 0.15
CPU_DRIVER_RESERVE = 0.5  # Ray CPUs left free on a CPU-only cluster (driver-side work, other tasks)


class PlanError(KdsrError, ValueError):
    """No placement fits: the message says what would."""


@dataclass
class Plan:
    device: str  # "cuda" | "cpu"
    num_actors: int
    gpus_per_actor: int = 0
    cpus_per_actor: float = 1.0  # Ray resource reservation
    torch_threads: int = 1  # CPU: intra-op threads per actor
    weight_gib: float = 0.0
    max_memory: dict[int | str, str] | None = None  # per actor, local GPU index -> "NGiB"
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.num_actors} actor(s) x {self.gpus_per_actor} GPU(s), weights {self.weight_gib:.1f} GiB" + (
                f", max_memory {self.max_memory}" if self.max_memory else ""
            )
        return f"{self.num_actors} CPU actor(s) x {self.torch_threads} thread(s), {self.cpus_per_actor:g} Ray CPU each"


def weight_bytes(n_params: int, precision: str, quantization: str = "none") -> float:
    if quantization == "none":
        return n_params * BYTES_PER_PARAM[precision]
    q = QUANT_BYTES_PER_PARAM[quantization]
    return n_params * ((1 - QUANT_UNQUANTIZED_FRACTION) * q + QUANT_UNQUANTIZED_FRACTION * 2.0)


def plan_gpu(
    n_params: int,
    precision: str,
    quantization: str,
    gpu_memory_gib: float,
    n_gpus: int,
    headroom: float = 0.25,
    gpus_per_actor: int | None = None,
    num_actors: int | None = None,
) -> Plan:
    """Fewest GPUs per actor that hold the weights, then as many actors as the GPUs allow."""
    if n_gpus <= 0:
        raise PlanError("no GPUs to plan for")
    need = weight_bytes(n_params, precision, quantization) / GIB
    usable = gpu_memory_gib * (1 - headroom)
    k = gpus_per_actor or max(1, math.ceil(need / usable))
    if k * usable < need:
        raise PlanError(
            f"weights need {need:.1f} GiB but {k} GPU(s) x {usable:.1f} GiB usable hold {k * usable:.1f}; "
            f"set resources.gpus_per_actor >= {math.ceil(need / usable)} or use quantization int8/nf4"
        )
    if k > n_gpus:
        raise PlanError(
            f"one actor needs {k} GPUs of {gpu_memory_gib:g} GiB for {need:.1f} GiB of weights ({precision}, "
            f"quantization {quantization}), but the cluster has {n_gpus}; use quantization int8/nf4 or bigger GPUs"
        )
    fit = n_gpus // k
    actors = min(num_actors, fit) if num_actors else fit
    notes = [] if not num_actors or num_actors <= fit else [f"asked for {num_actors} actors, only {fit} fit"]
    # Spread the weights evenly over the actor's GPUs (plus a margin), rather than filling GPU 0 first.
    per_gpu = min(usable, need / k * 1.1 + 0.5) if k > 1 else usable
    max_memory = {i: f"{per_gpu:.1f}GiB" for i in range(k)} if k > 1 else None
    return Plan(
        "cuda",
        actors,
        gpus_per_actor=k,
        cpus_per_actor=1.0,
        torch_threads=1,
        weight_gib=need,
        max_memory=max_memory,
        notes=notes,
    )


def plan_cpu(
    n_cpus: float, num_actors: int | None = None, torch_threads: int | None = None, cpus_per_actor: float | None = None
) -> Plan:
    """CPU actors: threads x actors <= cores; Ray reservations always leave CPU_DRIVER_RESERVE free."""
    cores = max(1, int(n_cpus))
    if num_actors is None:
        threads = torch_threads or min(cores, 8)  # beyond ~8 threads one small model scales poorly
        num_actors = max(1, cores // threads)
    else:
        threads = torch_threads or max(1, cores // num_actors)
    budget = max(n_cpus - CPU_DRIVER_RESERVE, 0.1 * num_actors)
    reserve = cpus_per_actor if cpus_per_actor is not None else min(float(threads), budget / num_actors)
    if reserve * num_actors > n_cpus + 1e-9:
        raise PlanError(
            f"{num_actors} actors x {reserve:g} CPUs exceed the cluster's {n_cpus:g} CPUs: the extra actors would wait "
            "forever; lower resources.num_actors or resources.cpus_per_actor"
        )
    notes = []
    if reserve * num_actors > n_cpus - CPU_DRIVER_RESERVE + 1e-9:
        notes.append(
            f"{num_actors} actors x {reserve:g} CPUs leave less than {CPU_DRIVER_RESERVE} CPU free "
            f"on a {n_cpus:g}-CPU cluster"
        )
    if threads * num_actors > cores:
        notes.append(f"{num_actors} actors x {threads} threads oversubscribe {cores} cores")
    return Plan("cpu", num_actors, cpus_per_actor=math.floor(reserve * 1000) / 1000, torch_threads=threads, notes=notes)
