"""A study's configuration bound to its data: class splits, tasks, the plan of runs, and the
networks they start from. Nothing here trains or schedules (driver.py does) or writes a report
(report/ does): it imports only configuration, data, models, treatments and the store it is
opened from.

Every run draws its own random streams from its key, so results do not depend on what ran before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from transferscope.config import StudyConfig
from transferscope.data import ImageData, load_dataset
from transferscope.data.splits import ClassSplit, split_classes, split_seed, whole_dataset
from transferscope.data.tasks import Task, make_task, partition, reduce_train, reduced
from transferscope.errors import UserError
from transferscope.models import CutNet, create_model
from transferscope.seeds import Seeds, TrainingSeeds, derive_seed
from transferscope.sources import SourceSpec, load_source_weights
from transferscope.store import Store
from transferscope.surgery import check_cut
from transferscope.train import Budget, run_budget
from transferscope.treatments import RunSpec, base_key, build_plan


def describe_data(data: ImageData) -> dict[str, Any]:
    """What a study records of its data (study.json): the fingerprint a resume must match, and
    enough to plan, summarise and report the study where the images are gone."""
    counts = torch.bincount(data.y, minlength=data.num_classes).tolist()
    return {"name": data.name, "fingerprint": data.fingerprint, "images": len(data.y),
            "class_names": list(data.class_names), "image_shape": list(data.image_shape),
            "per_class": dict(zip(data.class_names, counts)), "skipped": list(data.skipped)}


#: class names a task's line shows before it says how many more there are
SHOWN_CLASSES = 6


def few(names: tuple[str, ...]) -> str:
    """A task's classes for a progress line: all of up to :data:`SHOWN_CLASSES`, else how many and
    the first few."""
    if len(names) <= SHOWN_CLASSES:
        return ", ".join(names)
    return f"{len(names)} classes ({', '.join(names[:SHOWN_CLASSES - 2])}, ...)"


def fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def network_options(config: StudyConfig, input_config: dict[str, Any] | None) -> dict[str, Any]:
    """``model.options`` completed for the study's source: a checkpoint or timm network sees its
    inputs at the side it was trained at (``input_config``: 224 for torchvision's ImageNet weights,
    timm's ``pretrained_cfg``), unless the options set that side themselves (``min_size``,
    ``image_size`` or ``img_size``, whichever the architecture takes)."""
    options = dict(config.model.options)
    size_option = (input_config or {}).get("size_option")
    if config.source.kind in ("checkpoint", "timm") and size_option and size_option not in options:
        options[size_option] = int(input_config["input_size"][-1])  # type: ignore[index]
    return options


@dataclass
class Study:
    """A configuration bound to its data: the class splits, tasks and plan of runs.

    ``data`` is None for a recorded study opened without its images (:meth:`open`): status and
    most of the report need only ``info`` (the data's description) and the recorded splits;
    ``missing`` says why the images are not there."""

    config: StudyConfig
    data: ImageData | None
    info: dict[str, Any]
    num_layers: int
    cut_points: tuple[int, ...]
    plan: list[RunSpec]
    #: ``model.options`` as every network of the study is built with them (:func:`network_options`)
    model_options: dict[str, Any]
    missing: str | None = None
    #: the architecture's pretrained input configuration (``CutNet.input_config``: mean, std, size)
    input_config: dict[str, Any] | None = None
    _splits: dict[int, ClassSplit] = field(default_factory=dict)
    _tasks: dict[tuple[int, str, float | int | None], Task] = field(default_factory=dict)
    _part_labels: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def prepare(cls, config: StudyConfig, splits: dict[int, dict[str, Any]] | None = None,
                decode: bool = True, data: ImageData | None = None) -> Study:
        """Load the data and plan the runs. ``splits`` (as saved in splits.json) replaces
        drawing the class splits again, e.g. for a finished study whose split file moved.
        ``decode=False`` leaves image files not decoded before undecoded (to plan, not to train).
        ``data``: these images instead of ``config.data``'s (a stand-in, to plan)."""
        data = load_dataset(config.data, decode=decode) if data is None else data
        study = cls._build(config, data, describe_data(data), splits)
        if config.design == "pretrained":
            study.check_source()  # a bad [source] is one line now, before anything is written or trained
        return study

    @classmethod
    def open(cls, store: Store, images: bool = True) -> Study:
        """The study recorded in ``store`` (configuration, splits, data description), for status
        and report. With ``images`` its dataset is loaded where it is available and unchanged;
        otherwise, or where it is gone or changed, the study has no images and ``missing`` says
        why (a study from before study.json existed always needs its dataset)."""
        config, splits = store.load_config(), store.load_splits()
        info = store.identity().get("data")
        if not info:
            return cls.prepare(config, splits)
        if not images:
            return cls._build(config, None, info, splits, missing="not loaded")
        try:
            data = load_dataset(config.data)
        except UserError as e:
            return cls._build(config, None, info, splits, missing=f"the dataset cannot be loaded here: {e}")
        if data.fingerprint != info.get("fingerprint"):
            return cls._build(config, None, info, splits, missing="the dataset changed since the study ran")
        return cls._build(config, data, info, splits)

    @classmethod
    def _build(cls, config: StudyConfig, data: ImageData | None, info: dict[str, Any],
               splits: dict[int, dict[str, Any]] | None, missing: str | None = None) -> Study:
        shape = tuple(info["image_shape"])
        with torch.device("meta"):  # the layer structure only: no weights allocated
            probe = create_model(config.model.arch, 2, shape, config.model.options)
            options = network_options(config, probe.input_config)
            if options != config.model.options:
                probe = create_model(config.model.arch, 2, shape, options)
        if config.treatments.cut_points == "all":
            cuts = tuple(probe.cut_points)
        else:
            cuts = tuple(sorted(set(config.treatments.cut_points)))
            for n in cuts:
                check_cut(probe, n, config.model.arch)
        study = cls(config, data, info, probe.num_layers, cuts, build_plan(config, cuts), options, missing,
                    probe.input_config)
        names = tuple(info["class_names"])
        for r, saved in (splits or {}).items():
            study._splits[r] = ClassSplit(tuple(saved["A_indices"]), tuple(saved["B_indices"]), names,
                                          saved["description"])
        if data is not None:
            for r in range(config.treatments.replicates):
                study.split(r)  # a bad split fails now, before any training
        return study

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["image_shape"])  # type: ignore[return-value]

    def images(self) -> ImageData:
        """The dataset; a clear error where the study was opened without it."""
        if self.data is None:
            raise UserError(f"data.dataset {self.config.data.dataset!r}: the images are needed here but "
                            f"{self.missing}")
        return self.data

    def split(self, replicate: int) -> ClassSplit:
        """The class split of a replicate; from a pretrained network, the whole dataset (T)."""
        if replicate not in self._splits:
            self._splits[replicate] = (split_classes(self.config.split, self.images(), replicate)
                                       if self.config.design == "split" else whole_dataset(self.images()))
        return self._splits[replicate]

    def task(self, replicate: int, name: str, size: float | int | None = None) -> Task:
        """Task ``name`` of a replicate, with all of its training images or a reduced ``size``."""
        if size is not None:
            if (replicate, name, size) not in self._tasks:
                self._tasks[replicate, name, size] = reduce_train(self.task(replicate, name), size)
            return self._tasks[replicate, name, size]
        if (replicate, name, None) not in self._tasks:
            task = make_task(name=name, workers=self.config.data.workers, **self._partition_args(replicate, name))
            self._tasks[replicate, name, None] = self._pretrained_inputs(task)
        return self._tasks[replicate, name, None]

    def _pretrained_inputs(self, task: Task) -> Task:
        """A checkpoint or timm source expects its inputs standardised as it was trained
        (``input_config``: ImageNet's mean and std for torchvision's and most of timm's); every
        other network, a transferscope source included, standardises by its task's own statistics.
        A grey task takes the mean of the three channels' (block 1 repeats it to three)."""
        cfg = self.input_config
        if self.config.source.kind not in ("checkpoint", "timm") or not cfg:
            return task
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        if len(task.mean) == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return replace(task, mean=mean, std=std)

    def _partition_args(self, replicate: int, name: str) -> dict[str, Any]:
        d = self.config.data
        return {"data": self.images(), "classes": self.split(replicate).classes(name), "val_fraction": d.val_fraction,
                "test_fraction": d.test_fraction, "seed": derive_seed("partition", self.config.seed, replicate, name),
                "train_per_class": d.train_per_class}

    def _labels(self, replicate: int, name: str, part: str) -> torch.Tensor:
        if (replicate, name) not in self._part_labels:
            self._part_labels[replicate, name] = {k: y for k, (_, y) in
                                                  partition(**self._partition_args(replicate, name)).items()}
        return self._part_labels[replicate, name][part]

    def train_images(self, replicate: int, name: str, size: float | int | None = None) -> int:
        """How many training images :meth:`task` gives, counted from the labels alone (the driver
        plans every run's budget without loading any task's images)."""
        y = self._labels(replicate, name, "train")
        return len(y) if size is None else len(reduced(y, len(self.split(replicate).classes(name)), size))

    def eval_images(self, replicate: int, name: str) -> tuple[int, int]:
        """How many validation and test images :meth:`task` gives (from the labels alone)."""
        return len(self._labels(replicate, name, "val")), len(self._labels(replicate, name, "test"))

    def budget(self, spec: RunSpec, follow: Budget | None = None) -> Budget:
        """How long ``spec`` trains: ``train.epochs`` on its task's full training set, and on
        reduced target data what ``treatments.size_budget`` gives (see train.run_budget). Under
        ``train.budget = "plateau"`` that is the maximum; ``follow``: the budget its base network
        found (:meth:`budget_base`), which it then trains exactly."""
        if spec.kind.head == "linear":  # a probe is fitted in closed form: no optimisation steps
            return Budget(0, 0, self.config.treatments.size_budget)
        base = self.budget_base(spec)
        if follow is not None and base is not None:
            return follow.follow(base, self.train_images(*spec.task_key), self.config.train.batch_size)
        return run_budget(self.config.train, self.config.treatments.size_budget, self.train_images(*spec.task_key),
                          self.train_images(spec.replicate, spec.target))

    def finds_budget(self, spec: RunSpec) -> bool:
        """Under ``train.budget = "plateau"``: a base network trained on all its data, which finds
        the budget (steps and learning-rate drops) every other run on its task follows."""
        return self.config.train.budget == "plateau" and spec.kind.is_base and spec.size is None

    def budget_base(self, spec: RunSpec) -> str | None:
        """Under ``train.budget = "plateau"``, the base network whose budget ``spec`` follows: that
        of its target task, trained on all its data (as in the paper, every network is compared
        with its base after the same number of steps). None for that base itself, a probe (no
        steps) and a fixed budget."""
        if self.config.train.budget != "plateau" or spec.kind.head == "linear" or self.finds_budget(spec):
            return None
        return base_key(spec.replicate, spec.target)

    def seeds(self, spec: RunSpec) -> Seeds:
        """The seeds of the random streams ``spec`` draws from: named by what they are for and
        derived from the study's seed and the run's :attr:`~RunSpec.seed_key`."""
        seed = self.config.seed
        training = TrainingSeeds.derive(seed, spec.seed_key)
        return Seeds(study=seed, init=derive_seed("init", seed, spec.seed_key),
                     partition=derive_seed("partition", seed, spec.replicate, spec.target),
                     order=training.order, augment=training.augment, dropout=training.dropout,
                     split=split_seed(self.config.split, spec.replicate) if self.config.design == "split" else None)

    def network(self, replicate: int, task: str, init_seed: int = 0) -> CutNet:
        """A network of the study's architecture and options with a head for ``task``'s classes
        (the one place one is built; under ``torch.device("meta")`` it allocates no weights)."""
        return create_model(self.config.model.arch, len(self.split(replicate).classes(task)), self.image_shape,
                            self.model_options, init_seed=init_seed)

    def new_network(self, spec: RunSpec, task: str, seed_key: str) -> CutNet:
        return self.network(spec.replicate, task, derive_seed("init", self.config.seed, seed_key))

    def pretrained_weights(self, net: CutNet) -> dict[str, torch.Tensor]:
        """Layers 1..(the highest cut point) of the study's pretrained network (``[source]``), in
        ``net``'s key names, for ``load_state_dict(strict=False)``."""
        s, m = self.config.source, self.config.model
        spec = SourceSpec(kind=s.kind, path=s.path, study=s.study, run=s.run,  # type: ignore[arg-type]
                          name=m.arch.removeprefix("timm/") if s.kind == "timm" else None)
        return load_source_weights(spec, net, layers=max(self.cut_points), model=m)

    def check_source(self) -> None:
        """Read the pretrained network's layers 1..(highest cut point) into a network of the study's
        architecture (no weights allocated), so a missing, unreadable or mismatched source ends
        the command with its one-line UserError rather than failing every run that copies it."""
        with torch.device("meta"):
            net = self.network(0, "T")
        self.pretrained_weights(net)

    def input_words(self) -> str:
        """How images reach the network: standardised by what, at what side (for the run header
        and the report of a study from pretrained weights)."""
        cfg, s = self.input_config, self.config.source
        size_option = (cfg or {}).get("size_option")
        side = self.model_options.get(size_option) if size_option else None
        shape = "x".join(map(str, self.image_shape[1:]))
        if s.kind not in ("checkpoint", "timm") or not cfg:
            return f"{shape} images standardised by the target's own mean and std"
        given = size_option in self.config.model.options
        resized = (f"upsampled to a shorter side of at least {side} px" if size_option == "min_size"
                   else f"resized to {side}x{side} px")
        return (f"{shape} images {resized} (model.options.{size_option}"
                + (")" if given else " unset: the side the weights were trained at; set it to override)")
                + f", standardised by the weights' mean {fmt(cfg['mean'])} and std {fmt(cfg['std'])}")

    @property
    def flip(self) -> bool:
        """Whether augmentation flips images horizontally."""
        return self.config.data.flip if self.config.data.flip is not None else self.images().flip_ok

    def describe(self) -> str:
        t = self.config.treatments
        lines = [f"dataset {self.config.data.dataset} ({len(self.info['class_names'])} classes, {self.info['images']} images), "
                 f"architecture {self.config.model.arch} ({self.num_layers} layers, cut points "
                 f"{', '.join(map(str, self.cut_points))}), {t.replicates} replicate(s), targets {', '.join(t.targets)}"]
        if self.config.design == "pretrained":
            src = self.config.source
            lines.append(f"  source: the pretrained network of source.kind = {src.kind!r} ("
                         + (f"{src.study}, run {src.run}" if src.kind == "study" else src.path or "timm's local cache")
                         + f"); target T: {self.split(0).description}")
            lines.append(f"  input: {self.input_words()}")
            return "\n".join(lines)
        for r in range(t.replicates):
            s = self.split(r)
            lines.append(f"  replicate {r}: {s.description}; A = {few(s.names('A'))}; B = {few(s.names('B'))}")
        if any(len(self.split(r).names(task)) > SHOWN_CLASSES for r in range(t.replicates) for task in ("A", "B")):
            lines.append("  (every class of every task: splits.json in the results directory, and the report)")
        return "\n".join(lines)
