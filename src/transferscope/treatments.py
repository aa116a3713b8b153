"""The treatments of the study and the plan of runs they make.

For target task T and the other task S, at cut point n:

=========  ===========  ==========  ====================================================
paper      role         source      network
=========  ===========  ==========  ====================================================
baseT      base         --          all layers trained from scratch on T
TnT        selffer      baseT       layers 1..n copied from baseT and frozen, rest re-initialised
TnT+       selffer+     baseT       the same, every layer fine-tuned
SnT        transfer     baseS       layers 1..n copied from baseS and frozen, rest re-initialised
SnT+       transfer+    baseS       the same, every layer fine-tuned
randomT    random       randomT     layers 1..n keep their random initial weights, frozen
=========  ===========  ==========  ====================================================

The random control's prefix comes from one untrained network per replicate and target (key
``r<r>-random<T>``), so its cut points share a frozen prefix like the other frozen treatments do.

The study file names treatments as the paper does for target B (BnB, AnB+, ...); each is run for
every target in ``treatments.targets`` (target A mirrors the names: AnA, BnA+, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from transferscope.config import StudyConfig

#: study-file name -> (role, source is the target's own base?)
ROLES = {"BnB": "selffer", "BnB+": "selffer+", "AnB": "transfer", "AnB+": "transfer+", "random": "random"}


def other(task: str) -> str:
    return "A" if task == "B" else "B"


@dataclass(frozen=True)
class RunSpec:
    """One network to train. ``source`` is the task whose base network donates layers 1..n."""

    key: str
    replicate: int
    treatment: str  # the run's own paper-style name: baseA, AnB+, BnA, randomB, ...
    role: str  # base, selffer, selffer+, transfer, transfer+, random
    target: str  # "A" or "B"
    source: str | None
    n: int  # 0 for base networks
    #: reduced target data: a fraction (float) or images per class (int) of the training part;
    #: None for the full study
    size: float | int | None = None

    @property
    def frozen(self) -> int:
        """How many leading layers stay frozen."""
        return self.n if self.role in ("selffer", "transfer", "random") else 0

    @property
    def copied(self) -> int:
        """How many leading layers start as a copy of the source network."""
        return self.n if self.source_net is not None else 0

    @property
    def source_net(self) -> str | None:
        """The network whose layers 1..n this run starts from: a base network, or for the random
        control the untrained network of its replicate and target."""
        if self.role == "random":
            return f"r{self.replicate}-random{self.target}"
        return self.depends_on

    @property
    def depends_on(self) -> str | None:
        """The recorded run this one needs first: always a base network trained on all of its data."""
        return base_key(self.replicate, self.source) if self.source else None

    @property
    def task_key(self) -> tuple[int, str, float | int | None]:
        """The training data this run sees: replicate, target task and size."""
        return self.replicate, self.target, self.size


def size_label(size: float | int) -> str:
    """``0.05`` -> ``5pct`` (a fraction of each class), ``10`` -> ``10pc`` (images per class)."""
    return f"{size * 100:g}pct" if isinstance(size, float) else f"{size}pc"


@dataclass(frozen=True)
class Job:
    """Runs executed together. A frozen group shares one source network's prefix outputs on one
    task (see features.py): its runs differ only in the cut point."""

    key: str
    specs: tuple[RunSpec, ...]

    @property
    def depends_on(self) -> str | None:
        return self.specs[0].depends_on


def group_jobs(specs: list[RunSpec], share_frozen: bool) -> list[Job]:
    """One job per run, except that frozen runs with the same source network and target form one
    job when ``share_frozen`` (their prefix outputs are computed once). Base networks come first;
    otherwise jobs keep plan order (a group sits where its first run was)."""
    slots: dict[str, list[RunSpec]] = {}
    for s in specs:
        key = (f"{s.source_net}->{s.target}" + (f"@{size_label(s.size)}" if s.size is not None else "")
               if share_frozen and s.frozen and s.source_net else s.key)
        slots.setdefault(key, []).append(s)
    jobs = [Job(key, tuple(sorted(runs, key=lambda s: s.n))) for key, runs in slots.items()]
    return sorted(jobs, key=lambda j: j.specs[0].role != "base")
def base_key(replicate: int, task: str) -> str:
    return f"r{replicate}-base{task}"


def _spec(replicate: int, name: str, target: str, n: int, size: float | int | None = None) -> RunSpec:
    role = ROLES[name]
    suffix = f"-s{size_label(size)}" if size is not None else ""
    if role == "random":
        return RunSpec(f"r{replicate}-random{target}-n{n}{suffix}", replicate, f"random{target}", role, target, None, n, size)
    source = target if role.startswith("selffer") else other(target)
    plus = "+" if role.endswith("+") else ""
    treatment = f"{source}n{target}{plus}"
    return RunSpec(f"r{replicate}-{treatment}-n{n}{suffix}", replicate, treatment, role, target, source, n, size)


def build_plan(config: StudyConfig, cut_points: tuple[int, ...]) -> list[RunSpec]:
    """Every run of the study, base networks first (transfers start from them).

    Both base networks of a replicate always run: they are the sources of every copy and the
    reference that relative accuracy is measured against."""
    t = config.treatments
    plan = [RunSpec(base_key(r, task), r, f"base{task}", "base", task, None, 0)
            for r in range(t.replicates) for task in ("A", "B")]
    for r in range(t.replicates):
        for n in cut_points:
            for target in t.targets:
                plan += [_spec(r, name, target, n) for name in t.names if name != "base"]
    # freeze or fine-tune, by target size: the transfer treatments again on less target data,
    # beside a base network trained from scratch on that same data
    for size in t.target_sizes:
        for r in range(t.replicates):
            for target in t.targets:
                plan.append(RunSpec(f"{base_key(r, target)}-s{size_label(size)}", r, f"base{target}", "base",
                                    target, None, 0, size))
                plan += [_spec(r, name, target, n, size) for n in cut_points for name in ("AnB", "AnB+")]
    return plan
