"""Will a run fit? A pre-flight estimate of the full-softmax (`optim.loss: ce`) step's peak memory, the one
part of training that grows with the catalog, so that a run that cannot fit says so before it starts.

Per item row, a ce step holds: the fused table and its activations forward and backward (the gate keeps
several (1 + M) x D states per row), one chunk of 2,048 positions' logits with their softmax and gradient,
and the tables with their gradients and two Adam moments. The constants were fitted to the peak RSS measured by
stepping N up to 400,000 items on full-length batches (bench/results/scale.md: 2.9 GiB per 100,000 items at
hidden 128 with one 128-d modality); the estimate is about 6% above that slope, so it errs high.
"""

from __future__ import annotations

import psutil
import torch

from kdsr.config import ConfigError

LOGIT_CHUNK = 2048  # positions per checkpointed softmax chunk (trainer/losses.py: full_softmax_ce)
BASELINE = 2**30  # the process before any item row: torch, the backbone, the dataset


def ce_step_bytes(n_items: int, hidden: int, modality_dims: list[int], fusion: str) -> int:
    """Estimated peak bytes of one full-softmax training step over n_items."""
    m = len(modality_dims)
    states = 1 + m if m else 0
    per_fused_row = 4 * hidden * ((3 * states if fusion == "gate" else 2 * states) + 2)  # fwd + bwd activations
    per_logit_row = 4 * LOGIT_CHUNK * 3  # logits, softmax, gradient of one chunk
    per_table_row = 4 * 4 * (hidden + sum(modality_dims))  # parameter, gradient, two Adam moments
    return n_items * (per_fused_row + per_logit_row + per_table_row)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total


def check_fits(cfg, n_items: int, modality_dims: list[int], device: torch.device) -> None:
    """Refuse a ce run whose estimated step does not fit the machine, naming the key that fixes it."""
    if cfg.optim.loss != "ce":
        return
    need = BASELINE + ce_step_bytes(n_items, cfg.model.hidden, modality_dims, cfg.model.fusion)
    have = available_bytes(device)
    if need > 0.9 * have:
        raise ConfigError(
            f"optim.loss=ce over {n_items:,} items needs about {need / 2**30:.1f} GiB per step (the full softmax and "
            f"fused table grow with the catalog) but this {device.type} has {have / 2**30:.1f} GiB; set "
            "optim.loss=sampled_softmax (a step's cost then does not depend on the catalog size)"
        )
