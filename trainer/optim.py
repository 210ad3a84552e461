"""The asynchronous learning step: one Adam with two parameter groups, the modality tables V^m learning at
lr / gamma^2 (so the features' information is retained longer), optionally ramped back up by a factor gamma
at given epochs. The rate is a pure function of the epoch, so a resumed run gets it right by construction."""

from __future__ import annotations

import torch


def modality_lr(cfg, epoch: int) -> float:
    a, lr = cfg.async_step, cfg.optim.lr
    if not a.enabled:
        return lr
    ups = sum(epoch >= m for m in a.milestones)
    return min(lr, lr / a.gamma**2 * a.gamma**ups)


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    slow = {id(p) for p in model.modality_parameters()}
    groups = [{"name": "main", "params": [p for p in model.parameters() if id(p) not in slow], "lr": cfg.optim.lr}]
    if slow:
        groups.append({"name": "modality", "params": model.modality_parameters(), "lr": modality_lr(cfg, 0)})
    return torch.optim.Adam(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg, epoch: int) -> None:
    for g in optimizer.param_groups:
        g["lr"] = modality_lr(cfg, epoch) if g.get("name") == "modality" else cfg.optim.lr
