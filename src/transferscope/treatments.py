"""The treatments of the study, declared once, and the plan of runs they make.

For target task T and the other task S, at cut point n (the paper's Fig. 1):

=============  ==============  ==========  ===============================================================
name (T = B)   role            copies      network
=============  ==============  ==========  ===============================================================
base           base            --          all layers trained from scratch on T
BnB            selffer         baseT       layers 1..n copied from baseT and frozen, rest re-initialised
BnB+           selffer+        baseT       the same, every layer fine-tuned
AnB            transfer        baseS       layers 1..n copied from baseS and frozen, rest re-initialised
AnB+           transfer+       baseS       the same, every layer fine-tuned
random         random          randomT     layers 1..n keep their random initial weights, frozen
AnB-adabn      transfer-adabn  baseS       as AnB, with the frozen layers' BatchNorm statistics
                                           re-estimated on T's training images (AdaBN)
=============  ==============  ==========  ===============================================================

A study from a pretrained network (``[source]``, design "pretrained") has one target task T, the
whole target dataset, and copies from the pretrained network P (no run trains it):

=============  ================  ==========  =============================================================
name           role              copies      network
=============  ================  ==========  =============================================================
baseT          base              --          all layers trained from scratch on T
PnT            pretrained        P           layers 1..n copied from P and frozen, rest re-initialised
PnT+           pretrained+       P           the same, every layer fine-tuned
PnT-adabn      pretrained-adabn  P           as PnT, BatchNorm statistics of layers 1..n re-estimated on T
probe          probe             P           layers 1..n copied from P and frozen, a linear classifier
                                             on layer n's features (no layers n+1..L)
randomT        random            randomT     layers 1..n keep their random initial weights, frozen
=============  ================  ==========  =============================================================

:data:`TREATMENTS` is the only place this vocabulary is written: the configuration's accepted
names, the plan, how a network is built (what is copied, frozen, re-estimated), which weights are
kept, the statistics' labels and decomposition, the figures and the analyses all read it. Adding a
treatment is one :class:`Treatment` entry (and its tests).

The study file names treatments as the paper does for target B (BnB, AnB+, ...); each is run for
every target in ``treatments.targets`` (target A mirrors the names: AnA, BnA+, ...), by the entry's
``pattern``. The random control's prefix comes from one untrained network per replicate and target
(key ``r<r>-random<T>``), so its cut points share a frozen prefix like the other frozen treatments do.

AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation") keeps the
transferred weights and replaces only the normalisation statistics: :func:`~transferscope.surgery.reestimate_bn`
recomputes the running mean and variance of every BatchNorm in layers 1..n on the target task's
training images (un-augmented: the statistics describe the images the frozen layers will see at test
time, and do not depend on an augmentation draw), layer by layer from the bottom. The statistics of
layer k then depend only on layers 1..k, so one adapted source network per target task serves every
cut point (the cached frozen features stay exact). An AnB-adabn run takes its initialisation and
data-order seeds from the AnB run of the same replicate, target and n (``seeds_from``), so the two
differ by the statistics alone; on an architecture without BatchNorm there is nothing to re-estimate
and AnB-adabn trains exactly what AnB trains (same record but for its name and role).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transferscope.config import StudyConfig
    from transferscope.train import Budget

#: which network layers 1..n start from: the target task's own base network, the other task's,
#: the untrained network of the replicate and target, or the pretrained network of the study's
#: ``[source]``; None: nothing is copied (a base network)
Copies = Literal["target", "other", "random", "pretrained"]
#: what trains above layer n: layers n+1..L re-initialised (the paper's treatments), or one linear
#: classifier on layer n's features (a probe)
Head = Literal["layers", "linear"]
#: the two kinds of study: the paper's (base networks trained on tasks A and B of one dataset), and
#: a pretrained network transferred to a whole target dataset (``source.kind`` other than "split")
Design = Literal["split", "pretrained"]
#: the key of the pretrained network in a study from one (it is loaded, never trained)
PRETRAINED = "pretrained"
#: the BatchNorm running statistics of the copied layers: the source network's, or re-estimated on
#: the target task's training images before the upper layers train
BnStats = Literal["source", "target"]
FigureName = Literal["fig2", "fig3"]


def other(task: str) -> str:
    return "A" if task == "B" else "B"


@dataclass(frozen=True)
class Style:
    """How the figures draw a treatment."""

    color: str
    marker: str
    offset: float  # horizontal shift at each n, so treatments sit side by side
    spread: float = 0.035  # half-width of the random jitter of single networks
    face: str | None = None  # marker face colour when it differs from ``color``


@dataclass(frozen=True)
class Treatment:
    """One treatment of the study, everything that depends on which treatment a run is."""

    #: the study-file name, written for target B (``treatments.names``)
    name: str
    #: the direction-free name the run table, statistics and analyses group by (BnB and AnA are
    #: both "selffer")
    role: str
    #: how figures and tables label it
    label: str
    #: the run's own name for target ``{T}`` with ``{O}`` the other task (BnA+ is "{O}n{T}+" for T=A)
    pattern: str
    #: which network layers 1..n are copied from (None: nothing, a base network)
    copies: Copies | None
    #: whether the copied layers train with the rest (False: frozen, learning rate 0)
    fine_tuned: bool
    #: the BatchNorm running statistics of the copied layers (see :data:`BnStats`)
    bn_stats: BnStats
    #: in which of the paper's figures it is drawn (base is the reference line of both)
    figures: tuple[FigureName, ...]
    style: Style
    #: whether its networks fine-tuned on all their target data are kept under
    #: ``eval.save_weights = "bases+finetuned"`` and compared with their sources (CKA)
    analysed: bool = False
    #: repeated on reduced target data (``treatments.target_sizes``), for freeze or fine-tune
    at_target_sizes: bool = False
    #: the treatment whose run at the same replicate, target, n and size gives this one its
    #: initialisation and data-order seeds (None: its own key): a variant drawn with the same
    #: random numbers as what it varies, so the two differ by the treatment alone
    seeds_from: str | None = None
    #: what trains above the copied layers (see :data:`Head`)
    head: Head = "layers"
    #: the kinds of study it belongs to
    designs: tuple[Design, ...] = ("split",)

    @property
    def is_base(self) -> bool:
        return self.copies is None

    @property
    def reinitialised(self) -> str:
        """What starts from fresh weights (the base networks' initialiser, the run's own seed)."""
        return "every layer" if self.is_base else "layers n+1 and above"

    @property
    def decomposition(self) -> tuple[tuple[str, int], ...]:
        """Its part in the decomposition: (quantity, +1 as minuend or -1 as subtrahend)."""
        return tuple((c.name, 1 if c.minuend == self.role else -1) for c in DECOMPOSITION
                     if self.role in (c.minuend, c.subtrahend))

    def frozen_layers(self, n: int) -> int:
        """How many leading layers stay frozen at cut point n."""
        return n if self.copies is not None and not self.fine_tuned else 0

    def run_name(self, target: str) -> str:
        """The run's own paper-style name for ``target``: baseA, AnB+, BnA, randomB, ..."""
        return self.pattern.format(T=target, O=other(target))

    def source(self, target: str) -> str | None:
        """The task whose base network donates layers 1..n (None for base and random; "P" for
        the pretrained network)."""
        return {"target": target, "other": other(target), "pretrained": "P"}.get(self.copies or "")


@dataclass(frozen=True)
class Contrast:
    """A quantity of the paper's decomposition: one role minus another, paired per replicate and
    target task (the words for each are report/markdown.py's)."""

    name: str
    minuend: str
    subtrahend: str


#: Every treatment, in the order of figures and tables.
TREATMENTS: tuple[Treatment, ...] = (
    Treatment(name="base", role="base", label="base", pattern="base{T}", copies=None, fine_tuned=False,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("black", "o", 0.0, spread=0.12, face="white"),
              at_target_sizes=True, designs=("split", "pretrained")),
    Treatment(name="BnB", role="selffer", label="BnB", pattern="{T}n{T}", copies="target", fine_tuned=False,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#08306b", "o", -0.18)),
    Treatment(name="BnB+", role="selffer+", label="BnB+", pattern="{T}n{T}+", copies="target", fine_tuned=True,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#4f9fdc", "P", -0.06), analysed=True),
    Treatment(name="AnB", role="transfer", label="AnB", pattern="{O}n{T}", copies="other", fine_tuned=False,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#99000d", "D", 0.06), at_target_sizes=True),
    Treatment(name="AnB+", role="transfer+", label="AnB+", pattern="{O}n{T}+", copies="other", fine_tuned=True,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#f47a6b", "P", 0.18), analysed=True,
              at_target_sizes=True),
    Treatment(name="random", role="random", label="random", pattern="random{T}", copies="random", fine_tuned=False,
              bn_stats="source", figures=("fig3",), style=Style("#5a5a5a", "^", 0.0), designs=("split", "pretrained")),
    Treatment(name="AnB-adabn", role="transfer-adabn", label="AnB-adabn", pattern="{O}n{T}-adabn", copies="other",
              fine_tuned=False, bn_stats="target", figures=("fig2", "fig3"), style=Style("#e6850e", "s", 0.30),
              seeds_from="AnB"),
    Treatment(name="PnT", role="pretrained", label="PnT", pattern="Pn{T}", copies="pretrained", fine_tuned=False,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#99000d", "D", 0.06), at_target_sizes=True,
              designs=("pretrained",)),
    Treatment(name="PnT+", role="pretrained+", label="PnT+", pattern="Pn{T}+", copies="pretrained", fine_tuned=True,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#f47a6b", "P", 0.18), analysed=True,
              at_target_sizes=True, designs=("pretrained",)),
    Treatment(name="PnT-adabn", role="pretrained-adabn", label="PnT-adabn", pattern="Pn{T}-adabn",
              copies="pretrained", fine_tuned=False, bn_stats="target", figures=("fig2", "fig3"),
              style=Style("#e6850e", "s", 0.30), seeds_from="PnT", at_target_sizes=True, designs=("pretrained",)),
    Treatment(name="probe", role="probe", label="probe", pattern="probe{T}", copies="pretrained", fine_tuned=False,
              bn_stats="source", figures=("fig2", "fig3"), style=Style("#2b8c3e", "v", -0.18), head="linear",
              at_target_sizes=True, designs=("pretrained",)),
)

#: The paper's decomposition, in report order.
DECOMPOSITION: tuple[Contrast, ...] = (
    Contrast("co-adaptation", "base", "selffer"),
    Contrast("specificity", "selffer", "transfer"),
    Contrast("fine-tuning gain", "transfer+", "base"),
)

#: The default ``treatments.names``: the paper's treatments (AnB-adabn is asked for by name).
DEFAULT_NAMES: tuple[str, ...] = ("base", "BnB", "BnB+", "AnB", "AnB+", "random")
#: ... and of a study from a pretrained network (PnT-adabn is asked for by name)
PRETRAINED_NAMES: tuple[str, ...] = ("base", "PnT", "PnT+", "probe", "random")

BY_NAME: dict[str, Treatment] = {t.name: t for t in TREATMENTS}
BY_ROLE: dict[str, Treatment] = {t.role: t for t in TREATMENTS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
ROLES: tuple[str, ...] = tuple(BY_ROLE)
BASE: Treatment = BY_ROLE["base"]
#: the treatments repeated on reduced target data, besides a base network on that data
AT_TARGET_SIZES: tuple[Treatment, ...] = tuple(t for t in TREATMENTS if t.at_target_sizes and not t.is_base)


def names_of(design: Design) -> tuple[str, ...]:
    """The treatments a kind of study may run."""
    return tuple(t.name for t in TREATMENTS if design in t.designs)


def _check_table() -> None:
    """The table's own consistency, checked on import: unique names, roles and labels, names that
    are their pattern for target B, decomposition roles that exist."""
    for column in ("name", "role", "label"):
        values = [getattr(t, column) for t in TREATMENTS]
        if len(set(values)) != len(values):
            raise ValueError(f"treatments: repeated {column} in {values}")
    for t in TREATMENTS:
        if t.name not in (t.run_name("B"), t.run_name("T"), t.pattern.replace("{T}", "")):
            raise ValueError(f"treatment {t.name}: pattern {t.pattern!r} gives {t.run_name('B')!r} for target B")
        if (t.copies == "pretrained") != (t.designs == ("pretrained",)):
            raise ValueError(f"treatment {t.name}: only a pretrained study copies from the pretrained network")
        if t.head == "linear" and (t.fine_tuned or t.copies is None):
            raise ValueError(f"treatment {t.name}: a linear probe sits on copied, frozen layers")
        if t.is_base != (t.role == "base"):
            raise ValueError(f"treatment {t.name}: only the base treatment copies nothing")
        if t.seeds_from is not None and t.seeds_from not in {u.name for u in TREATMENTS}:
            raise ValueError(f"treatment {t.name}: seeds_from {t.seeds_from!r} is not a treatment")
    for c in DECOMPOSITION:
        if {c.minuend, c.subtrahend} - set(ROLES):
            raise ValueError(f"decomposition {c.name}: unknown role in {c.minuend} - {c.subtrahend}")
    if set(DEFAULT_NAMES) - set(names_of("split")) or set(PRETRAINED_NAMES) - set(names_of("pretrained")):
        raise ValueError("default treatments not all in the table for their design")


_check_table()


def treatment(role: str) -> Treatment:
    """The treatment of a role (a run's ``role``)."""
    try:
        return BY_ROLE[role]
    except KeyError:
        raise ValueError(f"unknown role {role!r}; allowed: {', '.join(ROLES)}") from None


def roles_in(figure: FigureName) -> tuple[str, ...]:
    """The non-base roles a figure draws, in table order."""
    return tuple(t.role for t in TREATMENTS if figure in t.figures and not t.is_base)


@dataclass(frozen=True)
class RunSpec:
    """One network to train. ``source`` is the task whose base network donates layers 1..n."""

    key: str
    replicate: int
    treatment: str  # the run's own paper-style name: baseA, AnB+, BnA, randomB, ...
    role: str  # the role of its :class:`Treatment` (:data:`ROLES`)
    target: str  # "A" or "B"
    source: str | None
    n: int  # 0 for base networks
    #: reduced target data: a fraction (float) or images per class (int) of the training part;
    #: None for the full study
    size: float | int | None = None

    @property
    def kind(self) -> Treatment:
        """Its entry in :data:`TREATMENTS`."""
        return treatment(self.role)

    @property
    def frozen(self) -> int:
        """How many leading layers stay frozen."""
        return self.kind.frozen_layers(self.n)

    @property
    def copied(self) -> int:
        """How many leading layers start as a copy of the source network."""
        return self.n if self.source_net is not None else 0

    @property
    def source_net(self) -> str | None:
        """The network whose layers 1..n this run starts from: a base network, the pretrained
        network (:data:`PRETRAINED`), or for the random control the untrained network of its
        replicate and target."""
        if self.kind.copies == "random":
            return f"r{self.replicate}-random{self.target}"
        if self.kind.copies == "pretrained":
            return PRETRAINED
        return self.depends_on

    @property
    def prefix_net(self) -> str | None:
        """What layers 1..n are, as a name: the source network, or, where the treatment
        re-estimates BatchNorm statistics on the target, that network adapted to the target task
        (on this run's training data, the target and size of :attr:`task_key`). Frozen runs with
        the same prefix network, target and size share its outputs (:func:`group_jobs`)."""
        if self.source_net is None or self.kind.bn_stats == "source":
            return self.source_net
        return f"{self.source_net}~bn{self.target}"

    @property
    def depends_on(self) -> str | None:
        """The recorded run this one needs first: always a base network trained on all of its data
        (None where it copies nothing, or from the pretrained network, which no run trains)."""
        return base_key(self.replicate, self.source) if self.kind.copies in ("target", "other") else None

    @property
    def seed_key(self) -> str:
        """The key its initialisation and data seeds derive from: its own, or that of the run of
        the treatment it takes its seeds from (``Treatment.seeds_from``)."""
        twin = self.kind.seeds_from
        if twin is None:
            return self.key
        return run_spec(self.replicate, twin, self.target, self.n, self.size).key

    @property
    def task_key(self) -> tuple[int, str, float | int | None]:
        """The training data this run sees: replicate, target task and size."""
        return self.replicate, self.target, self.size


def size_key(size: float | int) -> str:
    """A target size in run keys: ``0.05`` -> ``5pct`` (a fraction of each class), ``10`` ->
    ``10pc`` (images per class)."""
    return f"{size * 100:g}pct" if isinstance(size, float) else f"{size}pc"


def size_label(size: float) -> str:
    """A target size in words (the report), from the number a record holds (NaN: the full
    study): NaN -> ``full``, ``0.05`` -> ``5%``, ``10`` -> ``10 per class``."""
    if not math.isfinite(size):
        return "full"
    return f"{size * 100:g}%" if size < 1 else f"{size:g} per class"


@dataclass(frozen=True)
class Job:
    """Runs executed together. A frozen group shares one source network's prefix outputs on one
    task (see features.py): its runs differ only in the cut point."""

    key: str
    specs: tuple[RunSpec, ...]
    #: its frozen runs train on the prefix outputs computed once (decided here, by group_jobs)
    shares_features: bool = False
    #: under ``train.budget = "plateau"``: run key -> the budget found by the base network it
    #: follows (set by the driver when it submits the job, from that base's record)
    budgets: dict[str, Budget] = field(default_factory=dict)

    @property
    def depends_on(self) -> str | None:
        return self.specs[0].depends_on


def group_jobs(specs: list[RunSpec], share_frozen: bool) -> list[Job]:
    """One job per run, except that frozen runs with the same prefix network and target form one
    job when ``share_frozen`` (their prefix outputs are computed once). Base networks come first;
    otherwise jobs keep plan order (a group sits where its first run was)."""
    slots: dict[str, list[RunSpec]] = {}
    shared: set[str] = set()
    for s in specs:
        key = s.key
        if share_frozen and s.frozen and s.prefix_net:
            net = s.prefix_net if s.prefix_net.startswith(f"r{s.replicate}-") else f"r{s.replicate}-{s.prefix_net}"
            key = f"{net}->{s.target}" + (f"@{size_key(s.size)}" if s.size is not None else "")
            shared.add(key)
        slots.setdefault(key, []).append(s)
    jobs = [Job(key, tuple(sorted(runs, key=lambda s: s.n)), key in shared) for key, runs in slots.items()]
    return sorted(jobs, key=lambda j: not j.specs[0].kind.is_base)


def base_key(replicate: int, task: str) -> str:
    return f"r{replicate}-base{task}"


def run_spec(replicate: int, name: str, target: str, n: int, size: float | int | None = None) -> RunSpec:
    """The run of treatment ``name`` (a row of the treatment table) in ``replicate`` on ``target`` at cut
    point n, at target size ``size`` (None: all of the target's training images)."""
    t = BY_NAME[name]
    suffix = f"-s{size_key(size)}" if size is not None else ""
    treatment = t.run_name(target)
    return RunSpec(f"r{replicate}-{treatment}-n{n}{suffix}", replicate, treatment, t.role, target, t.source(target), n,
                   size)


def build_plan(config: StudyConfig, cut_points: tuple[int, ...]) -> list[RunSpec]:
    """Every run of the study, base networks first (transfers start from them).

    In the paper's design both base networks of a replicate always run: they are the sources of
    every copy and the reference that relative accuracy is measured against. A study from a
    pretrained network has one target task and its base network, the reference."""
    t = config.treatments
    tasks = ("A", "B") if config.design == "split" else t.targets
    plan = [RunSpec(base_key(r, task), r, BASE.run_name(task), BASE.role, task, None, 0)
            for r in range(t.replicates) for task in tasks]
    for r in range(t.replicates):
        for n in cut_points:
            for target in t.targets:
                plan += [run_spec(r, name, target, n) for name in t.names if not BY_NAME[name].is_base]
    # freeze or fine-tune, by target size: the transfer treatments again on less target data,
    # beside a base network trained from scratch on that same data
    for size in t.target_sizes:
        for r in range(t.replicates):
            for target in t.targets:
                plan.append(RunSpec(f"{base_key(r, target)}-s{size_key(size)}", r, BASE.run_name(target), BASE.role,
                                    target, None, 0, size))
                plan += [run_spec(r, x.name, target, n, size) for n in cut_points for x in AT_TARGET_SIZES
                         if x.name in t.names]
    return plan
