import math

import pytest
import torch

from transferscope.config import EvalConfig, TrainConfig
from transferscope.data.augment import normalize, random_crop
from transferscope.seeds import TrainingSeeds, derive_seed, generator
from transferscope.precision import Numerics
from transferscope.train import Budget, PixelFeed, evaluate, lr_factor, run_budget, steps_per_epoch, train_network

from conftest import build_network


def base_spec(study, task="B"):
    return next(s for s in study.plan if s.key == f"r0-base{task}")


def train_once(study, cfg=None, seed=0):
    spec = base_spec(study)
    net = build_network(study, spec, {})
    out = train_network(net, study.task(0, "B"), cfg or study.config.train, study.config.eval, copied=0,
                        seeds=TrainingSeeds.derive(seed))
    return net, out


def test_same_seeds_give_identical_numbers(tiny_study):
    net1, a = train_once(tiny_study)
    net2, b = train_once(tiny_study)
    assert a.history == b.history and a.metrics == b.metrics
    for (k, v), w in zip(net1.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(v, w), k
    _, c = train_once(tiny_study, seed=1)  # the training streams really are used
    assert c.history != a.history


def test_each_training_stream_is_its_own(tiny_study, monkeypatch):
    """The data order, augmentation and dropout draw from separate streams: the order every epoch
    sees is the same with augmentation on or off and whatever the other two seeds, and the
    augmentation and dropout seeds are really used."""
    orders: list[torch.Tensor] = []
    real = PixelFeed.train_batches

    def spy(self, epoch, order, batch_size, g):  # the real feed, its orders noted
        orders.append(order.clone())
        yield from real(self, epoch, order, batch_size, g)

    monkeypatch.setattr(PixelFeed, "train_batches", spy)
    task, cfg = tiny_study.task(0, "B"), tiny_study.config.train
    assert cfg.augment and tiny_study.config.model.options["dropout"] > 0

    def train(seeds, augment=True):
        orders.clear()
        net = build_network(tiny_study, base_spec(tiny_study), {})
        out = train_network(net, task, cfg.model_copy(update={"augment": augment}), tiny_study.config.eval,
                            copied=0, seeds=seeds)
        return [o.tolist() for o in orders], out.history

    base = TrainingSeeds(order=1, augment=2, dropout=3)
    order, history = train(base)
    assert len(order) == cfg.epochs and order[0] != order[1]
    for other in (TrainingSeeds(1, 7, 3), TrainingSeeds(1, 2, 7)):
        o, h = train(other)
        assert o == order and h != history  # the same order; the other stream changed the numbers
    assert train(base, augment=False)[0] == order
    assert train(TrainingSeeds(7, 2, 3))[0] != order


def test_history_and_metrics(tiny_study):
    _, out = train_once(tiny_study)
    assert out.status == "done" and len(out.history) == tiny_study.config.train.epochs
    assert set(out.history[0]) == {"epoch", "train_loss", "lr", "val_top1"}  # 5 classes: no top-5
    assert set(out.metrics) == {"test_top1", "val_top1", "val_best_k_mean"}
    assert out.metrics["val_best_k_mean"] >= min(h["val_top1"] for h in out.history)
    assert out.metrics["val_best_k_mean"] == pytest.approx(
        sum(sorted((h["val_top1"] for h in out.history), reverse=True)[:5]) / min(5, len(out.history)))


def test_learns_the_task(tiny_study):
    cfg = tiny_study.config.train.model_copy(update={"epochs": 8})
    _, out = train_once(tiny_study, cfg)
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
    assert out.metrics["test_top1"] > 0.6  # 5 digit classes; chance is 0.2


def test_top5_recorded_for_more_than_five_classes(tiny_study):
    from transferscope.data.tasks import make_task

    task = make_task(tiny_study.data, "A", tuple(range(8)), 0.2, 0.2, seed=0)
    net = tiny_study.new_network(base_spec(tiny_study), "A", "x")
    net.blocks[-1] = torch.nn.Linear(net.blocks[-1][-1].in_features, 8)
    cpu = Numerics(torch.device("cpu"), None, False)
    res = evaluate(net, PixelFeed(task, cpu, False, False), "val", cpu, 64)
    assert set(res) == {"top1", "top5"} and res["top5"] >= res["top1"]


def test_non_finite_loss_ends_the_run_as_diverged(tiny_study):
    cfg = tiny_study.config.train.model_copy(update={"lr": 1e12, "weight_decay": 0.0, "epochs": 5})
    _, out = train_once(tiny_study, cfg)
    assert out.status == "diverged" and 1 <= out.diverged_epoch <= 5
    assert out.metrics == {}


def test_schedules():
    step = TrainConfig(schedule="step", step_epochs=10, step_gamma=0.1, epochs=30)
    assert [lr_factor(step, e) for e in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = TrainConfig(schedule="cosine", epochs=10)
    assert lr_factor(cos, 0) == 1 and lr_factor(cos, 5) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(schedule="constant"), 7) == 1


def test_a_longer_run_stretches_the_schedule_over_all_of_it():
    cos = TrainConfig(schedule="cosine", epochs=10)
    long = [lr_factor(cos, e, 70) for e in range(70)]
    assert long[0] == 1 and long[35] == pytest.approx(0.5) and long[-1] < 0.01
    assert all(a > b for a, b in zip(long, long[1:]))  # no restart where the 10-epoch schedule would end
    # the step schedule decays at the same fractions of the run: every 10 of 30 epochs = every 20 of 60
    step = TrainConfig(schedule="step", step_epochs=10, step_gamma=0.1, epochs=30)
    assert [lr_factor(step, e, 60) for e in (0, 19, 20, 39, 40, 59)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert [lr_factor(step, e, 30) for e in range(30)] == [lr_factor(step, e) for e in range(30)]


def test_budget_rules():
    cfg = TrainConfig(epochs=20, batch_size=64)
    assert steps_per_epoch(450, 64) == 7 and steps_per_epoch(22, 64) == 1  # fewer than a batch: one batch
    # the full set: train.epochs, whatever the rule
    assert run_budget(cfg, "steps", 450, 450) == Budget(20, 140, "steps")
    assert run_budget(cfg, "epochs", 450, 450) == Budget(20, 140, "epochs")
    # a fifth of it: the same 140 steps in more epochs, or the same epochs with a fifth of the steps
    assert run_budget(cfg, "steps", 90, 450) == Budget(140, 140, "steps")
    assert run_budget(cfg, "epochs", 90, 450) == Budget(20, 20, "epochs")
    # 3 steps per epoch do not divide 140: 47 epochs, the last one cut short
    assert run_budget(cfg, "steps", 200, 450) == Budget(47, 140, "steps")


def test_training_follows_its_budget(tiny_study):
    net = build_network(tiny_study, base_spec(tiny_study), {})
    task = tiny_study.task(0, "B")
    per_epoch = steps_per_epoch(len(task.train), tiny_study.config.train.batch_size)
    assert per_epoch >= 2
    budget = Budget(epochs=4, steps=3 * per_epoch + 1, rule="steps")  # the fourth epoch stops after one step
    out = train_network(net, task, tiny_study.config.train, tiny_study.config.eval, copied=0, seeds=TrainingSeeds.derive(0),
                        budget=budget)
    assert out.status == "done" and out.steps == budget.steps and len(out.history) == 4
    cfg = tiny_study.config.train
    assert [h["lr"] for h in out.history] == pytest.approx([cfg.lr * lr_factor(cfg, e, 4) for e in range(4)])
    _, default = train_once(tiny_study)
    assert default.steps == cfg.epochs * per_epoch and len(default.history) == cfg.epochs


def test_random_crop_is_a_translation():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop(x, 1, generator(0))
    assert out.shape == x.shape
    for i in range(2):  # each image is its own shifted copy: the centre 6x6 block appears in it
        centre = x[i, :, 1:7, 1:7]
        assert any(torch.equal(out[i, :, dy:dy + 6, dx:dx + 6], centre) for dy in range(3) for dx in range(3))


def test_normalize_uses_channel_stats():
    x = torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, (0.5, 0.0), (0.5, 2.0))
    assert out[0, 0].eq(1).all() and out[0, 1].eq(0.5).all()


def test_seeds_are_stable_and_distinct():
    assert derive_seed("init", 0, "r0-baseA") == derive_seed("init", 0, "r0-baseA")
    assert derive_seed("init", 0, "r0-baseA") != derive_seed("data", 0, "r0-baseA")
    assert 0 <= derive_seed("x") < 2**63
    assert derive_seed("init", 0, "r0-baseA") == 648871578204918065  # pinned: the same on any machine
