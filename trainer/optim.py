"""Optimizers of a run.

The asynchronous learning step (docs/METHOD.md, "Asynchronous learning step"): the modality tables V^m learn
at lr / gamma^len(milestones) (so the features' information is retained longer), as the released code sets it,
in a parameter group of their own; `async_step.ramp` (ours) multiplies it by gamma again at each milestone.
The rate is a pure function of the epoch, so a resumed run gets it right by construction.

The item tables at catalog scale: with sparse tables (`optim.sparse_tables`, `Student.sparse`), the (N + 1)-row
tables get sparse gradients and a lazy Adam (`torch.optim.SparseAdam`: moments and updates only for the rows a step
touched), and everything else a dense Adam. Dense Adam would read and write all N rows of every table and both
moment buffers every step (bench/results/scale.md has the measurement).
"""

from __future__ import annotations

import torch


def modality_lr(cfg, epoch: int) -> float:
    a, lr = cfg.async_step, cfg.optim.lr
    if not a.enabled:
        return lr
    ups = sum(epoch >= m for m in a.milestones) if a.ramp else 0
    return min(lr, lr / a.gamma ** len(a.milestones) * a.gamma**ups)


def _groups(params: list, slow: set[int], lr: float, slow_lr: float) -> list[dict]:
    groups = [{"name": "main", "params": [p for p in params if id(p) not in slow], "lr": lr}]
    if any(id(p) in slow for p in params):
        groups.append({"name": "modality", "params": [p for p in params if id(p) in slow], "lr": slow_lr})
    return [g for g in groups if g["params"]]


def build_optimizers(model, cfg) -> list[torch.optim.Optimizer]:
    """[Adam] or, when the model's tables have sparse gradients (`model.sparse`), [Adam over the dense
    parameters, SparseAdam over the item tables]."""
    slow = {id(p) for p in model.modality_parameters()}
    lr, slow_lr = cfg.optim.lr, modality_lr(cfg, 0)
    if not model.sparse:
        params = list(model.parameters())
        return [torch.optim.Adam(_groups(params, slow, lr, slow_lr), lr=lr, weight_decay=cfg.optim.weight_decay)]
    tables = {id(p) for p in model.table_parameters()}
    dense = [p for p in model.parameters() if id(p) not in tables]
    optimizers = [torch.optim.SparseAdam(_groups(model.table_parameters(), slow, lr, slow_lr), lr=lr)]
    if dense:
        optimizers.insert(
            0, torch.optim.Adam(_groups(dense, slow, lr, slow_lr), lr=lr, weight_decay=cfg.optim.weight_decay)
        )
    return optimizers


def set_epoch_lr(optimizers: list[torch.optim.Optimizer], cfg, epoch: int) -> None:
    for optimizer in optimizers:
        for g in optimizer.param_groups:
            g["lr"] = modality_lr(cfg, epoch) if g.get("name") == "modality" else cfg.optim.lr


@torch.no_grad()
def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (L2, total over all parameters) that also takes sparse gradients."""
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.tensor(0.0)
    squares = []
    for i, g in enumerate(grads):
        if g.is_sparse:
            g = grads[i] = g.coalesce()
            squares.append(g._values().float().pow(2).sum())
        else:
            squares.append(g.float().pow(2).sum())
    total = torch.stack([s.to(squares[0].device) for s in squares]).sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce() * coef.to(p.grad.device)
            else:
                p.grad.mul_(coef.to(p.grad.device))
    return total
