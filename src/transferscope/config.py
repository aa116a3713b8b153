"""The study as a typed, frozen configuration.

A study is written as a TOML file whose tables mirror the classes below ([data], [split], [model],
[treatments], [train], [eval]). Every field has a default, so an empty file (or none) is the
default study on the bundled digits data. Unknown keys and wrong types are errors that name the
key; ``--set key=value`` overrides any field by its dotted path.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transferscope.errors import UserError
from transferscope.treatments import DEFAULT_NAMES, NAMES, PRETRAINED_NAMES, Design, names_of

#: Treatments as the paper names them for target task B (the table of transferscope.treatments),
#: the default ones first. With ``targets`` including "A", each is mirrored (BnB -> AnA, AnB -> BnA,
#: random -> randomA).
TREATMENTS = NAMES
TreatmentName = Literal[NAMES]  # type: ignore[valid-type]
#: how long a run on reduced target data trains (``treatments.size_budget``)
SizeBudget = Literal["steps", "epochs"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(_Section):
    """Which dataset, and how each task's classes are divided into train/val/test images."""

    dataset: str = "digits"
    #: where the dataset's files are (a folder; for npz, the .npz file)
    root: str | None = None
    #: fetch the files with torchvision's real download where the dataset has one
    download: bool = False
    #: resize (shorter side) and centre-crop every image to this many pixels; None keeps the size
    image_size: int | None = Field(None, ge=4)
    #: skip unreadable image files (counted in the report) instead of stopping with an error
    skip_corrupt: bool = False
    #: decoded datasets are cached here as uint8 tensors [default: $TRANSFERSCOPE_CACHE or ~/.cache/transferscope]
    cache_dir: str | None = None
    #: datasets whose decoded images exceed this stream from their files through DataLoader workers
    memory_limit_gb: float = Field(8.0, gt=0)
    #: DataLoader worker processes for streamed datasets
    workers: int = Field(2, ge=0)
    #: random horizontal flips in augmentation; None: where the dataset allows them (photos, not
    #: digits or characters)
    flip: bool | None = None
    #: at most this many training images per class (a seeded subset; None: all of them)
    train_per_class: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be below 0.9 to leave training images")
        return self


class SplitConfig(_Section):
    """How the dataset's classes become the two tasks A and B.

    - ``random``: a seeded random partition, a new one per replicate (drawn from the named stream
      "split" of ``seed`` and the replicate, seeds.py); ``sizes`` gives
      ``[|A|, |B|]`` (default: half and half, A gets the odd class).
    - ``file``: a TOML or JSON file with ``A = [...]`` and ``B = [...]`` (class names or indices).
    - ``groups``: ``groups_file`` maps class -> group (or the dataset's own groups are used);
      ``a_groups`` / ``b_groups`` name the groups of each task.
    - ``natural-vs-manmade``: the paper's dissimilar split, A = natural, B = man-made classes, for
      datasets whose classes are known (CIFAR-100 superclasses, ImageNet WordNet ids).
    """

    kind: Literal["random", "file", "groups", "natural-vs-manmade"] = "random"
    #: non-negative, like every seed
    seed: int = Field(0, ge=0)
    sizes: tuple[int, int] | None = None
    file: str | None = None
    groups_file: str | None = None
    a_groups: tuple[str, ...] = ()
    b_groups: tuple[str, ...] = ()

    @field_validator("sizes")
    @classmethod
    def _sizes_positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("each of |A| and |B| must be >= 1")
        return v

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> SplitConfig:
        if self.kind == "file" and not self.file:
            raise ValueError("split.kind = 'file' needs split.file (a TOML/JSON file with A and B)")
        if self.kind == "groups" and not (self.a_groups and self.b_groups):
            raise ValueError("split.kind = 'groups' needs non-empty split.a_groups and split.b_groups")
        return self


class SourceConfig(_Section):
    """Where the copied layers come from.

    - ``split`` (the default): the paper's design, base networks trained by the study on tasks A
      and B of ``data.dataset`` ([split] says how its classes divide).
    - ``checkpoint``: a weights file of ``model.arch`` (``path``: a PyTorch state dict, ``.pth`` or
      ``.pt``, or ``.safetensors``; keys named as transferscope, torchvision or timm name them).
    - ``timm``: the pretrained weights of ``model.arch = "timm/<name>"``, from ``path`` or timm's
      local cache (nothing is downloaded during a study).
    - ``study``: base network ``run`` (e.g. "r0-baseA") of the transferscope study in ``study``.

    The last three transfer the pretrained network to ``data.dataset`` used whole (all of its
    classes, the target task T).
    """

    kind: Literal["split", "checkpoint", "timm", "study"] = "split"
    path: str | None = None
    study: str | None = None
    run: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> SourceConfig:
        if self.kind == "checkpoint" and not self.path:
            raise ValueError('kind "checkpoint" needs path = "<weights file>"')
        if self.kind == "study" and not (self.study and self.run):
            raise ValueError('kind "study" needs study = "<study directory>" and run = "<run key, e.g. r0-baseA>"')
        if self.kind == "split" and (self.path or self.study or self.run):
            raise ValueError('path, study and run are for a pretrained source (kind "checkpoint", "timm" or "study")')
        return self


class ModelConfig(_Section):
    """The architecture, by registry name, and its keyword options."""

    arch: str = "convnet"
    options: dict[str, Any] = Field(default_factory=dict)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class TreatmentConfig(_Section):
    """Which treatments, at which cut points, in which directions, how many replicates."""

    #: which treatments (transferscope.treatments.TREATMENTS): the paper's by default; AnB-adabn
    #: is asked for by name
    names: tuple[TreatmentName, ...] = DEFAULT_NAMES
    cut_points: tuple[int, ...] | Literal["all"] = "all"
    #: the paper's design: which directions (default both); from a pretrained source: ["T"]
    targets: tuple[Literal["A", "B", "T"], ...] = ("B", "A")
    replicates: int = Field(5, ge=1)
    #: freeze or fine-tune, by target size: repeat the transfer treatments (AnB, AnB+) and a base
    #: network from scratch with less target training data, each size a fraction of every class's
    #: training images (0.05) or a number of images per class (10)
    target_sizes: tuple[float | int, ...] = ()
    #: how long a run on reduced target data trains: "steps" (the default) gives it the same
    #: number of optimisation steps as the run on its task's full training set, so more epochs;
    #: "epochs" keeps ``train.epochs`` and so gives it fewer steps. Equal epochs starve training
    #: from scratch on a small subset (a 5% subset gets a twentieth of the steps) and so favour
    #: transfer in the very comparison the target sizes make
    size_budget: SizeBudget = "steps"
    #: BatchNorm in frozen layers: "fixed" (statistics and affine parameters frozen, the default)
    #: or "train-affine" (statistics frozen, the affine scale and shift train)
    frozen_bn: Literal["fixed", "train-affine"] = "fixed"

    @field_validator("cut_points", mode="before")
    @classmethod
    def _all_or_layers(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "all":
            raise ValueError("expected \"all\" or a list of layer numbers such as [1, 2, 3]")
        return v

    @field_validator("target_sizes")
    @classmethod
    def _sizes(cls, v: tuple) -> tuple:
        for size in v:
            if isinstance(size, float) and not 0 < size < 1:
                raise ValueError(f"a fraction must be between 0 and 1 (exclusive), got {size}; "
                                 "the full data is always run")
            if isinstance(size, int) and size < 1:
                raise ValueError(f"images per class must be >= 1, got {size}")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a size")
        return v

    @field_validator("names", "targets")
    @classmethod
    def _not_empty(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat an entry")
        return v


class TrainConfig(_Section):
    """One recipe for every run (as in the paper): SGD with momentum and weight decay."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    step_epochs: int = Field(10, ge=1)
    step_gamma: float = Field(0.1, gt=0, le=1)
    #: "fixed": every run trains ``epochs`` epochs on its schedule. "plateau": each base network
    #: trained on all its data divides its rate by ``step_gamma`` when the least-squares slope of its
    #: validation top-1 per epoch, over the last ``plateau_window`` epochs and over the last half of
    #: the epochs since the rate last changed, is at most ``plateau_threshold`` (train.Plateau), and
    #: stops at the plateau after ``plateau_drops`` drops (or
    #: at ``epochs``, the maximum); every other run on that task then trains as many optimisation
    #: steps as that base did, its rate dropped at the same steps (the paper's schedule, with the
    #: drop points found instead of fixed). Needs ``schedule = "step"``.
    budget: Literal["fixed", "plateau"] = "fixed"
    plateau_window: int = Field(8, ge=2)
    plateau_threshold: float = Field(0.002, ge=0)
    plateau_drops: int = Field(2, ge=0)
    augment: bool = True
    #: learning-rate multiplier for copied layers in fine-tuned treatments (paper: 1.0)
    finetune_lr_scale: float = Field(1.0, ge=0)
    #: "auto": bf16 autocast where the CPU or GPU supports it, else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    #: frozen runs: compute the frozen prefix's output once per source network and task and
    #: train the upper layers on it ("cached"), or push every batch through the whole network
    frozen_features: Literal["cached", "recompute"] = "cached"
    #: with augmentation on, how many augmented views of the training images the cache holds
    #: (epoch e trains on view e mod views); with augmentation off there is one exact view
    feature_views: int = Field(4, ge=1)
    #: the most memory cached features may take; fewer views (or recomputing) beyond it
    feature_memory_gb: float = Field(4.0, gt=0)


#: what ``execution.log`` may name (transferscope.tracking)
TRACKING_BACKENDS = ("tensorboard", "mlflow")


class ExecutionConfig(_Section):
    """Where and how runs execute. A study gives the same numbers on the CPU with any number of
    workers and either executor, so it may be resumed with other ones. ``threads`` is the
    exception and part of a study's identity: torch splits its reductions by thread count, so 1
    and 2 threads give different accuracies and weights, and a resume must keep the recorded
    value."""

    executor: Literal["local", "ray"] = "local"
    #: worker processes for the local executor ("auto": one per CPU core, at most 8)
    workers: int | Literal["auto"] = "auto"
    #: torch threads in each worker (changes the numbers: a resume must use the recorded value)
    threads: int = Field(1, ge=1)
    #: "auto" (CUDA where available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Ray cluster address (None: start or join a local one)
    address: str | None = None
    #: GPUs per run on a Ray cluster (a fraction lets several runs share one GPU)
    gpus_per_run: float = Field(0.0, ge=0)
    #: experiment tracking: every recorded run's history and final metrics also go to
    #: "tensorboard" (DIR/logs/tensorboard) and/or "mlflow" (DIR/logs/mlflow/mlflow.db); tracking.py
    log: tuple[str, ...] = ()

    @field_validator("workers")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or \"auto\"")
        return v

    @field_validator("log")
    @classmethod
    def _backends(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in TRACKING_BACKENDS:
                raise ValueError(f"unknown backend {name!r}; allowed: {', '.join(TRACKING_BACKENDS)}")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a backend")
        return v


class EvalConfig(_Section):
    """What is measured. The headline is the test top-1 of the final model, evaluated once."""

    best_k: int = Field(5, ge=1)
    batch_size: int = Field(512, ge=1)
    #: which trained networks keep their weights (safetensors): the base networks (the sources of
    #: every copy, always kept, in float32), also the ones fine-tuned on all their target data (the
    #: analyses of how far fine-tuning moves each layer read them; float16), or every run (float16
    #: but for the sources)
    save_weights: Literal["bases", "bases+finetuned", "all"] = "bases+finetuned"


#: the report's analyses beyond the paper's curves (report.sections.analyze_study), in the order they run
ANALYSES = ("convergence", "cka", "estimate", "filters", "target_sizes", "comparison")


class ReportConfig(_Section):
    """What the report computes beyond the paper's figures and tables. Not part of a study's
    identity: a study may be reported, and resumed, with other analyses."""

    #: which analyses (default: all): "convergence" (were the base networks still improving),
    #: "cka" (representation similarity), "estimate" (LogME, H-score, probe), "filters" (first-layer
    #: filters), "target_sizes" (freeze or fine-tune by target size), "comparison" (with the study
    #: given to ``transferscope report --compare``)
    analyses: tuple[Literal[ANALYSES], ...] = ANALYSES  # type: ignore[valid-type]

    @field_validator("analyses")
    @classmethod
    def _once(cls, v: tuple) -> tuple:
        if len(set(v)) != len(v):
            raise ValueError("must not repeat an entry")
        return v


class StudyConfig(_Section):
    """The whole study. ``seed`` roots every run's random streams (init, data order, augmentation,
    dropout) and the per-class partitions; ``split.seed`` the class splits."""

    name: str = "study"
    #: non-negative, like every seed (NumPy's generators take no negative seed)
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    source: SourceConfig = SourceConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    treatments: TreatmentConfig = TreatmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    execution: ExecutionConfig = ExecutionConfig()
    report: ReportConfig = ReportConfig()

    @property
    def design(self) -> Design:
        """The paper's ("split") or a pretrained network transferred to a whole dataset."""
        return "split" if self.source.kind == "split" else "pretrained"

    @model_validator(mode="before")
    @classmethod
    def _pretrained_defaults(cls, values: Any) -> Any:
        """A study from a pretrained network runs the pretrained treatments on target T unless
        told otherwise."""
        if isinstance(values, dict) and (values.get("source") or {}).get("kind", "split") != "split":
            treatments = dict(values.get("treatments") or {})
            treatments.setdefault("names", PRETRAINED_NAMES)
            treatments.setdefault("targets", ("T",))
            values = {**values, "treatments": treatments}
        return values

    @model_validator(mode="after")
    def _treatments_of_the_design(self) -> StudyConfig:
        t, design = self.treatments, self.design
        wrong = [n for n in t.names if n not in names_of(design)]
        if wrong:
            raise ValueError(f"treatments.names: {', '.join(wrong)} cannot run in a study with source.kind = "
                             f"{self.source.kind!r}; allowed: {', '.join(names_of(design))}")
        if self.train.budget == "plateau" and self.train.schedule != "step":
            raise ValueError(f"train.budget = \"plateau\" drops the learning rate by train.step_gamma at each "
                             f"plateau: it needs train.schedule = \"step\", not {self.train.schedule!r}")
        if self.train.budget == "plateau" and t.target_sizes and t.size_budget != "steps":
            raise ValueError("treatments.size_budget: with train.budget = \"plateau\" every run trains as many "
                             "steps as its task's base network found, so reduced target data needs "
                             "treatments.size_budget = \"steps\", not \"epochs\"")
        allowed = ("T",) if design == "pretrained" else ("A", "B")
        if set(t.targets) - set(allowed):
            raise ValueError(f"treatments.targets: with source.kind = {self.source.kind!r} the targets are "
                             f"{' and '.join(allowed)}, not {', '.join(sorted(set(t.targets) - set(allowed)))}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# ----------------------------------------------------------------------------------- loading


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys allowed in the table that holds ``loc`` (for an "unknown key" message)."""
    model: Any = StudyConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    """One line: ``source: train.epochs: Input should be a valid integer (got 'x'); ...``."""
    found: dict[str, str] = {}
    for e in err.errors():
        # drop pydantic's union-member tags such as "tuple[int, ...]" from the key path
        loc = ".".join(str(p) for p in e["loc"] if not any(c in str(p) for c in "[']"))
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"])
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        else:
            msg = e["msg"]
        value = e.get("input")
        if e["type"] not in ("extra_forbidden", "missing") and not isinstance(value, dict):
            msg += f" (got {value!r})"
        found.setdefault(loc or "study", msg)
    # a union reports its field once per member: keep the most specific location
    keys = [k for k in found if not any(o.startswith(k + ".") for o in found)]
    return f"{source}: " + "; ".join(f"{k}: {found[k]}" for k in keys)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: '{p}' is a value, not a table")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``3``, ``0.1``, ``true``, ``[1, 2]``), or as a
    plain string when it is not valid TOML (``data.dataset=digits``)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected key=value, e.g. train.epochs=10")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def toml_value(value: Any) -> str:
    """``value`` as ``--set key=value`` reads it back (see :func:`parse_override`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}={toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _tuples_to_lists(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tuples_to_lists(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_tuples_to_lists(v) for v in tree]
    return tree


def _lists_to_tuples(tree: Any) -> Any:
    # TOML arrays arrive as lists; the frozen config stores tuples (strict mode wants the type)
    if isinstance(tree, dict):
        return {k: _lists_to_tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_lists_to_tuples(v) for v in tree)
    return tree


def config_from_dict(tree: dict[str, Any], source: str = "configuration") -> StudyConfig:
    tree = dict(tree)
    options = tree.get("model", {}).get("options") if isinstance(tree.get("model"), dict) else None
    converted = _lists_to_tuples(tree)
    if options is not None:  # architecture options stay as written (lists are fine there)
        converted["model"] = {**converted["model"], "options": options}
    try:
        return StudyConfig.model_validate(converted)
    except ValidationError as err:
        raise UserError(_format_errors(err, source)) from None


#: configuration values that are paths: relative ones are resolved against the study file's folder
#: (or the current directory, for --set), so a study means the same files from anywhere
PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("split", "file"), ("split", "groups_file"),
             ("source", "path"), ("source", "study"))


def _absolute_paths(tree: dict[str, Any], base: Path) -> None:
    for table, key in PATH_KEYS:
        value = tree.get(table, {}).get(key) if isinstance(tree.get(table), dict) else None
        if isinstance(value, str) and value:
            tree[table][key] = str((base / Path(value).expanduser()).resolve())


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study file (or the defaults when ``path`` is None) and apply ``key=value`` overrides.
    Relative paths in the file are relative to the file's folder; in overrides, to the current one."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UserError(f"{path}: study file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: cannot read study file ({e})") from None
        try:
            tree = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: invalid TOML: {e}") from None
        _absolute_paths(tree, path.resolve().parent)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        if tuple(key.split(".")) in PATH_KEYS:
            _absolute_paths(tree, Path.cwd())
    if overrides:
        source = f"{source} with --set"
    return config_from_dict(tree, source)


def dump_toml(config: StudyConfig) -> str:
    """The resolved configuration as TOML (saved beside the results)."""
    return tomli_w.dumps(_tuples_to_lists(config.to_dict()))
