"""Where one run is trained and evaluated.

Every treatment uses the same recipe (as in the paper): SGD with momentum and weight decay, a
learning-rate schedule over the epochs, batched augmentation on the device. Validation top-1 (and
top-5 where the task has more than 5 classes) is recorded every epoch; the test part is evaluated
once, on the final network. A non-finite loss ends the run as ``diverged``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from transferscope.config import EvalConfig, TrainConfig
from transferscope.data.augment import augment, normalize
from transferscope.data.tasks import AnyPart, Task
from transferscope.models.cutnet import CutNet
from transferscope.seeds import generator
from transferscope.surgery import trainable_parameters


@dataclass
class Outcome:
    status: str  # "done" or "diverged"
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    diverged_epoch: int | None = None


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The schedule's multiplier of ``cfg.lr`` during ``epoch`` (0-based)."""
    if cfg.schedule == "step":
        return cfg.step_gamma ** (epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


def make_optimizer(model: CutNet, cfg: TrainConfig, copied: int) -> torch.optim.SGD:
    """SGD over exactly the trainable parameters. Copied layers that train (fine-tuning) take
    ``cfg.lr * cfg.finetune_lr_scale``; the paper used the same rate everywhere (scale 1)."""
    params = trainable_parameters(model)
    copied_ids = {id(p) for block in model.blocks[:copied] for p in block.parameters()}
    groups = [{"params": [p for p in params if id(p) not in copied_ids], "lr_scale": 1.0},
              {"params": [p for p in params if id(p) in copied_ids], "lr_scale": cfg.finetune_lr_scale}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: CutNet, part: AnyPart, task: Task, batch_size: int) -> dict[str, float]:
    """Top-1 (and top-5 where the task has more than 5 classes) of ``model`` on ``part``."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    for xb, y in part.batches(batch_size):
        logits = model(normalize(xb, task.mean, task.std))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
    model.train(was_training)
    out = {"top1": correct1 / len(part)}
    if task.num_classes > 5:
        out["top5"] = correct5 / len(part)
    return out


def train_network(model: CutNet, task: Task, cfg: TrainConfig, eval_cfg: EvalConfig, *, copied: int,
                  data_seed: int, flip: bool = False,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Outcome:
    """Train ``model`` in place on ``task`` and evaluate it. ``data_seed`` drives the data order,
    the augmentation and dropout; ``copied`` says how many leading layers came from a source network."""
    # modules such as Dropout draw from torch's global stream: give it this run's seed, and leave
    # the caller's stream as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(data_seed)
        return _train(model, task, cfg, eval_cfg, copied, generator(data_seed), flip, on_epoch)


def _train(model: CutNet, task: Task, cfg: TrainConfig, eval_cfg: EvalConfig, copied: int, g: torch.Generator,
           flip: bool, on_epoch: Callable[[int, dict[str, float]], None] | None) -> Outcome:
    opt = make_optimizer(model, cfg, copied)
    n = len(task.train)
    outcome = Outcome("done")
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch) * group["lr_scale"]
        model.train()
        order = torch.randperm(n, generator=g)
        total, steps = torch.zeros(()), 0
        # the ragged last batch is dropped: BatchNorm needs more than one sample
        for xb, yb in task.train.batches(cfg.batch_size, order, drop_last=True):
            xb = normalize(xb, task.mean, task.std)
            if cfg.augment:
                xb = augment(xb, g, flip)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        train_loss = total.item() / steps
        if not math.isfinite(train_loss):
            outcome.status, outcome.diverged_epoch = "diverged", epoch + 1
            break
        val = evaluate(model, task.val, task, eval_cfg.batch_size)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": cfg.lr * lr_factor(cfg, epoch),
               **{f"val_{k}": v for k, v in val.items()}}
        outcome.history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    if outcome.status == "done":
        test = evaluate(model, task.test, task, eval_cfg.batch_size)
        val_scores = sorted((h["val_top1"] for h in outcome.history), reverse=True)
        outcome.metrics = {
            **{f"test_{k}": v for k, v in test.items()},
            "val_top1": outcome.history[-1]["val_top1"],
            "val_best_k_mean": sum(val_scores[: eval_cfg.best_k]) / min(eval_cfg.best_k, len(val_scores)),
        }
    return outcome
