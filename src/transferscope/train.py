"""Where one run is trained and evaluated.

Every treatment uses the same recipe (as in the paper): SGD with momentum and weight decay, a
learning-rate schedule over the epochs, batched augmentation on the device. Validation top-1 (and
top-5 where the task has more than 5 classes) is recorded every epoch; the test part is evaluated
once, on the final network. A non-finite loss ends the run as ``diverged``.

How long a run trains is its :class:`Budget`: ``train.epochs`` on a task's full training set; on
reduced target data (``treatments.target_sizes``) either the full set's number of optimisation
steps or its number of epochs (``treatments.size_budget``). The schedule spans whatever number of
epochs the budget gives, as it spans ``train.epochs`` on the full set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from transferscope.config import EvalConfig, SizeBudget, TrainConfig
from transferscope.data.augment import augment, normalize
from transferscope.data.tasks import Batch, Task
from transferscope.features import FrozenFeatures
from transferscope.models.cutnet import CutNet
from transferscope.precision import Numerics
from transferscope.seeds import TrainingSeeds, generator
from transferscope.surgery import trainable_parameters


@dataclass
class Outcome:
    status: str  # "done" or "diverged"
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    diverged_epoch: int | None = None
    steps: int = 0  # optimisation steps taken
    drops: list[int] = field(default_factory=list)  # plateau budget: the steps after which the rate dropped
    stopped: str | None = None  # plateau budget: why training ended


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimisation steps in one pass over ``images`` training images: full batches only (the
    ragged last batch is dropped), or a single batch of them all when they do not fill one."""
    return images // batch_size if images >= batch_size else 1


@dataclass(frozen=True)
class Budget:
    """How long one run trains: ``steps`` optimisation steps over ``epochs`` passes through its
    training images (the last pass stops early where the steps do not fill it), and the rule of
    ``treatments.size_budget`` that set them.

    With ``train.budget = "plateau"``: a base network trained on all its data is given the maximum
    (``train.epochs``) and records what it found: ``drops``, the steps after which its rate was
    divided by ``train.step_gamma``, and ``stopped``, why it ended; every other run on that task
    follows it (``found_by``: that base's key; its ``steps`` and ``drops``)."""

    epochs: int
    steps: int
    rule: SizeBudget
    drops: tuple[int, ...] | None = None
    found_by: str | None = None
    stopped: str | None = None

    def follow(self, key: str, images: int, batch_size: int) -> Budget:
        """The budget of a run on ``images`` training images that follows this one (found by base
        network ``key``): the same steps, and the same drops."""
        if self.drops is None:
            raise ValueError(f"{key}'s budget records no learning-rate drops: it was not found on a plateau")
        return Budget(math.ceil(self.steps / steps_per_epoch(images, batch_size)), self.steps, "steps",
                      tuple(self.drops), key)


def run_budget(cfg: TrainConfig, rule: SizeBudget, images: int, full_images: int) -> Budget:
    """The budget of a run on ``images`` training images of a task whose full training set has
    ``full_images``. On the full set: ``cfg.epochs`` epochs whatever the rule. On fewer images,
    rule "steps" keeps the full set's number of steps (more epochs), "epochs" keeps the epochs
    (fewer steps)."""
    per_epoch = steps_per_epoch(images, cfg.batch_size)
    if rule == "epochs":
        return Budget(cfg.epochs, cfg.epochs * per_epoch, rule)
    steps = cfg.epochs * steps_per_epoch(full_images, cfg.batch_size)
    return Budget(math.ceil(steps / per_epoch), steps, rule)


def lr_factor(cfg: TrainConfig, epoch: int, epochs: int | None = None) -> float:
    """The schedule's multiplier of ``cfg.lr`` during ``epoch`` (0-based) of a run of ``epochs``
    epochs (default ``cfg.epochs``). A longer run stretches the schedule: cosine reaches its end at
    the run's last epoch, and the step schedule decays at the same fractions of the run as it does
    every ``cfg.step_epochs`` of ``cfg.epochs``."""
    epochs = epochs or cfg.epochs
    if cfg.schedule == "step":
        return cfg.step_gamma ** (epoch * cfg.epochs // (epochs * cfg.step_epochs))
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return 1.0


FUSED_SGD_DEVICES = ("cpu", "cuda")


def make_optimizer(model: CutNet, cfg: TrainConfig, copied: int) -> torch.optim.SGD:
    """SGD over exactly the trainable parameters. Copied layers that train (fine-tuning) take
    ``cfg.lr * cfg.finetune_lr_scale``; the paper used the same rate everywhere (scale 1)."""
    params = trainable_parameters(model)
    copied_ids = {id(p) for block in model.blocks[:copied] for p in block.parameters()}
    groups = [{"params": [p for p in params if id(p) not in copied_ids], "lr_scale": 1.0},
              {"params": [p for p in params if id(p) in copied_ids], "lr_scale": cfg.finetune_lr_scale}]
    groups = [g for g in groups if g["params"]]
    # the fused kernel updates every tensor in one pass (half the step time of an fc suffix on a CPU)
    fused = all(p.device.type in FUSED_SGD_DEVICES for p in params) or None
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


class PixelFeed:
    """The naive path: uint8 images, normalised and augmented per batch, through every layer."""

    start = 0

    def __init__(self, task: Task, numerics: Numerics, augmented: bool, flip: bool):
        self.task, self.numerics, self.augmented, self.flip = task, numerics, augmented, flip

    def _prepare(self, xb: torch.Tensor) -> torch.Tensor:
        return normalize(xb.to(self.numerics.device, non_blocking=True), self.task.mean, self.task.std)

    def train_batches(self, epoch: int, order: torch.Tensor, batch_size: int, g: torch.Generator) -> Iterator[Batch]:
        for xb, yb in self.task.train.batches(batch_size, order, drop_last=True):
            xb = self._prepare(xb)
            if self.augmented:
                xb = augment(xb, g, self.flip)
            yield self.numerics.prepare_input(xb), yb.to(self.numerics.device)

    def eval_batches(self, part: str, batch_size: int) -> Iterator[Batch]:
        for xb, yb in getattr(self.task, part).batches(batch_size):
            yield self.numerics.prepare_input(self._prepare(xb)), yb.to(self.numerics.device)


class FeatureFeed:
    """The cached path: the frozen prefix's outputs, computed once (see features.py)."""

    def __init__(self, task: Task, features: FrozenFeatures, device: torch.device):
        self.task, self.features, self.start = task, features, features.n
        self.labels = {p: getattr(task, p).y.to(device) for p in ("train", "val", "test")}

    def train_batches(self, epoch: int, order: torch.Tensor, batch_size: int, g: torch.Generator) -> Iterator[Batch]:
        view = self.features.train_views[epoch % len(self.features.train_views)]
        n = len(order)
        stop = n - n % batch_size if n >= batch_size else n
        order = order.to(view.device)
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield view[idx], self.labels["train"][idx]

    def eval_batches(self, part: str, batch_size: int) -> Iterator[Batch]:
        feats = getattr(self.features, part)
        for i in range(0, feats.shape[0], batch_size):
            yield feats[i : i + batch_size], self.labels[part][i : i + batch_size]


Feed = PixelFeed | FeatureFeed


@torch.no_grad()
def evaluate(model: CutNet, feed: Feed, part: str, numerics: Numerics, batch_size: int) -> dict[str, float]:
    """Top-1 (and top-5 where the task has more than 5 classes) of ``model`` on a task part."""
    was_training = model.training
    model.eval()
    top5 = feed.task.num_classes > 5
    hits: list[torch.Tensor] = []  # per batch: top-1 (and top-5) hits; one device sync at the end
    total = 0
    with numerics.autocast():
        for xb, y in feed.eval_batches(part, batch_size):
            logits = model.forward_suffix(xb, feed.start) if feed.start else model(xb)
            if top5:
                top = logits.topk(5, dim=1).indices
                hits.append(torch.stack([(top[:, 0] == y).sum(), (top == y[:, None]).any(1).sum()]))
            else:
                hits.append((logits.argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    counts = torch.stack(hits).sum(0).tolist()
    if not top5:
        return {"top1": counts / total}
    return {"top1": counts[0] / total, "top5": counts[1] / total}


def train_network(model: CutNet, task: Task, cfg: TrainConfig, eval_cfg: EvalConfig, *, copied: int,
                  seeds: TrainingSeeds, flip: bool = False, numerics: Numerics | None = None,
                  features: FrozenFeatures | None = None, budget: Budget | None = None, plateau: bool = False,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> Outcome:
    """Train ``model`` in place on ``task`` and evaluate it. ``seeds``: the data order, the
    augmentation and dropout each draw from their own stream; ``copied`` says how many leading layers came from a source
    network. With ``features`` (the frozen prefix's outputs, computed once), only the layers
    above the frozen prefix run. ``budget``: how long to train (default: ``cfg.epochs`` epochs,
    as on a full training set); where it has ``drops``, the rate follows them (a run following a
    base network's plateau budget). ``plateau``: find the budget (a base network under
    ``train.budget = "plateau"``): drop the rate at each validation plateau, stop at the plateau
    after ``cfg.plateau_drops`` drops or at the budget, whichever comes first."""
    numerics = numerics or Numerics(torch.device("cpu"), None, False)
    if budget is None:
        budget = run_budget(cfg, "epochs", len(task.train), len(task.train))
    if features is not None:
        if features.n != model.num_frozen or not model.prefix_is_constant:
            raise ValueError(f"features of layer {features.n} do not fit a network with {model.num_frozen} frozen layers")
        feed: Feed = FeatureFeed(task, features, numerics.device)
    else:
        feed = PixelFeed(task, numerics, cfg.augment, flip)
    # modules such as Dropout draw from torch's global stream: give it this run's dropout seed, and
    # leave the caller's stream as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.dropout)
        return _train(model, feed, cfg, eval_cfg, copied, seeds, numerics, budget, plateau, on_epoch)


def lr_at(cfg: TrainConfig, budget: Budget, epoch: int, steps_done: int) -> float:
    """The learning rate of an epoch: from the schedule, or where the budget follows a base
    network's plateaus, divided by ``cfg.step_gamma`` once per drop already passed."""
    if budget.drops is not None:
        return cfg.lr * cfg.step_gamma ** sum(d <= steps_done for d in budget.drops)
    return cfg.lr * lr_factor(cfg, epoch, budget.epochs)


class Plateau:
    """The plateau detector of a base network finding its budget. After each epoch at the current
    rate (``window`` of them at least), the least-squares slope of validation top-1 per epoch is
    fitted over the last ``window`` epochs and over the last half of the epochs at this rate; a
    plateau is both at most ``threshold`` (and starts a new count at the new rate).

    A trend, not a running best: at a high rate validation top-1 jumps by several points between
    epochs (CIFAR-10, 500 validation images: -0.08..+0.11 at lr 0.05), so "no epoch beat the best
    by the threshold for a few epochs" (torch's ReduceLROnPlateau) fires after one lucky epoch
    while the curve still climbs half a point per epoch. The last half is the convergence check's
    own reading of a curve before its rate fell (analysis/convergence.py, "cut short"), in the same
    unit: a rate is never dropped where the check would call it cut short."""

    def __init__(self, window: int, threshold: float):
        self.window, self.threshold = window, threshold
        self.scores: list[float] = []

    @staticmethod
    def slope(values: list[float]) -> float:
        y = np.asarray(values, dtype=float)
        x = np.arange(len(y)) - (len(y) - 1) / 2
        return float(x @ (y - y.mean()) / (x @ x))

    def step(self, score: float) -> bool:
        """Record an epoch's score; True where it ends a plateau."""
        self.scores.append(score)
        n = len(self.scores)
        if n < self.window:
            return False
        half = max(3, math.ceil(n / 2))
        if max(self.slope(self.scores[-self.window:]), self.slope(self.scores[-half:])) > self.threshold:
            return False
        self.scores.clear()
        return True


def _train(model: CutNet, feed: Feed, cfg: TrainConfig, eval_cfg: EvalConfig, copied: int, seeds: TrainingSeeds,
           numerics: Numerics, budget: Budget, plateau: bool,
           on_epoch: Callable[[int, dict[str, float]], None] | None) -> Outcome:
    opt = make_optimizer(model, cfg, copied)
    detector = Plateau(cfg.plateau_window, cfg.plateau_threshold) if plateau else None
    # loss scaling only for fp16; bf16 and fp32 step directly (no per-step scaler calls)
    scaler = torch.amp.GradScaler(numerics.device.type) if numerics.dtype == torch.float16 else None
    n = len(feed.task.train)
    order_stream, augment_stream = generator(seeds.order), generator(seeds.augment)
    outcome = Outcome("done")
    model.train()  # evaluate() puts it back in training mode
    drops = 0
    for epoch in range(budget.epochs):
        lr = cfg.lr * cfg.step_gamma**drops if detector is not None else lr_at(cfg, budget, epoch, outcome.steps)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        order = torch.randperm(n, generator=order_stream)
        losses = []
        # the ragged last batch is dropped: BatchNorm needs more than one sample
        for xb, yb in feed.train_batches(epoch, order, cfg.batch_size, augment_stream):
            with numerics.autocast():
                logits = model.forward_suffix(xb, feed.start) if feed.start else model(xb)
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            losses.append(loss.detach())
            outcome.steps += 1
            if outcome.steps == budget.steps:
                break  # the budget's last epoch may stop before the end of the data
        train_loss = torch.stack(losses).float().mean().item() if losses else 0.0
        if not math.isfinite(train_loss):
            outcome.status, outcome.diverged_epoch = "diverged", epoch + 1
            break
        val = evaluate(model, feed, "val", numerics, eval_cfg.batch_size)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
               **{f"val_{k}": v for k, v in val.items()}}
        outcome.history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
        if detector is not None and detector.step(val["top1"]):
            if drops == cfg.plateau_drops:
                outcome.stopped = f"plateau after {drops} drop(s), at epoch {epoch + 1}"
                break
            drops += 1
            outcome.drops.append(outcome.steps)
    if detector is not None and outcome.stopped is None and outcome.status == "done":
        outcome.stopped = f"the maximum of {budget.epochs} epochs (train.epochs), after {drops} drop(s)"
    if outcome.status == "done":
        test = evaluate(model, feed, "test", numerics, eval_cfg.batch_size)
        val_scores = sorted((h["val_top1"] for h in outcome.history), reverse=True)
        outcome.metrics = {
            **{f"test_{k}": v for k, v in test.items()},
            "val_top1": outcome.history[-1]["val_top1"],
            "val_best_k_mean": sum(val_scores[: eval_cfg.best_k]) / min(eval_cfg.best_k, len(val_scores)),
        }
    return outcome
