"""The ``transferscope`` command. Nothing below this module sees a CLI argument: each command
turns its options into a :class:`StudyConfig` or a path and calls the library."""

from __future__ import annotations

import atexit
import errno
import functools
import importlib
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from transferscope.analysis.cache import current_report
from transferscope.config import ANALYSES, load_config
from transferscope.errors import Interrupted, UserError, request_stop

if TYPE_CHECKING:
    from transferscope.study import Study

# The modules that need torch (every command but --help and an unchanged report) are imported in
# the commands that use them: `transferscope report` on an unchanged study answers before torch loads.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure how transferable a network's features are, layer by layer (Yosinski et al. 2014).")
F = TypeVar("F", bound=Callable)


#: operating-system errors that are the machine's state, not a bug: one line, no traceback
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _user_errors(fn: F) -> F:
    """A user's mistake ends the command with one line on stderr and exit code 2, no traceback; a
    full disk or a permission denied, with one line and exit code 1; SIGINT/SIGTERM, with one line
    and the conventional 128 + signal number."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"transferscope: error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            from transferscope.store import os_error_line

            typer.echo(f"transferscope: error: {os_error_line(e)}", err=True)
            raise typer.Exit(1) from None
        except Interrupted as e:
            typer.echo(f"transferscope: {e.summary or 'stopped'}", err=True)
            raise typer.Exit(128 + e.signum) from None

    return wrapper  # type: ignore[return-value]


def _default_output(study_file: Path | None) -> Path:
    return Path("results") / (study_file.stem if study_file else "default")


@app.command()
@_user_errors
def run(
    study_file: Annotated[Optional[Path], typer.Argument(help="Study TOML file; the default digits study when omitted.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key, e.g. --set train.epochs=10 (repeatable).")] = [],  # noqa: B006
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Results directory [default: results/<study name>].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (every run and what it depends on) and stop.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    executor: Annotated[Optional[str], typer.Option("--executor", help="local or ray (= --set execution.executor=...).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address, e.g. 10.0.0.5:6379.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Local worker processes (= --set execution.workers=N).")] = None,
) -> None:
    """Run (or resume) a study: split the classes, train the base networks, every treatment at
    every cut point, then write the report."""

    from transferscope.driver import run_study

    shortcuts = [f"execution.{k}={v}" for k, v in (("executor", executor), ("workers", workers)) if v is not None]
    if address is not None:
        shortcuts.append(f'execution.address="{address}"')
    config = load_config(study_file, [*set_, *shortcuts])
    out = output or _default_output(study_file)
    if dry_run:
        _dry_run(_plan(config), out)
        return
    result = run_study(config, out, progress=not quiet)
    bad = result.failed
    if len(bad):  # the study is not complete: say which runs, and fail
        counts = Counter(bad["status"])
        shown = ", ".join(f"{k} ({st})" for k, st in zip(bad["key"][:10], bad["status"][:10]))
        typer.echo(f"{len(bad)} of {len(result.plan)} planned runs are not done ("
                   + ", ".join(f"{n} {st}" for st, n in counts.items()) + f"): {shown}"
                   + (" ..." if len(bad) > 10 else "") + f"; see `transferscope status {out}`", err=True)
        raise typer.Exit(1)


def _plan(config) -> Study:
    """The study planned without decoding its images; where its dataset is not on this machine and
    has a synthetic stand-in (data/standin.py), planned on that, with a line saying so."""
    from transferscope.data.standin import standin
    from transferscope.study import Study

    try:
        return Study.prepare(config, decode=False)
    except UserError as e:
        data = standin(config.data)
        if data is None:
            raise
        typer.echo(f"data: {e}")
        typer.echo(f"data: planned and calibrated on a synthetic stand-in of {config.data.dataset}'s shape instead "
                   f"({len(data.class_names)} classes, {int((~data.is_test).sum()):,} training and "
                   f"{int(data.is_test.sum()):,} test images at {'x'.join(map(str, data.image_shape))}, random "
                   "pixels): the plan, budgets and times are the real dataset's, its accuracies are not")
        return Study.prepare(config, decode=False, data=data)


def _dry_run(study: Study, out: Path) -> None:
    """The plan, the network's layers and what each treatment trains, and the time and disk the
    study will take (dryrun.py), without training or writing anything."""
    import transferscope.disk as disk
    import transferscope.dryrun as dryrun

    config = study.config
    typer.echo(study.describe())
    net_layers = dryrun.layers(study)
    typer.echo("layers (output per image; parameters; parameters in layers 1..n, what a copy at n carries):")
    typer.echo(f"  {'n':>3}  {'layer':<12} {'output':<16} {'parameters':>12} {'layers 1..n':>12}")
    for layer in net_layers:
        mark = "" if layer.n in study.cut_points else "   (not a cut point)" if layer.n < study.num_layers else "   (head)"
        typer.echo(f"  {layer.n:>3}  {layer.name:<12} {'x'.join(map(str, layer.output_shape)):<16} "
                   f"{layer.params:>12,} {layer.copied_params:>12,}{mark}")
    trains = dryrun.trainable_params(study)
    names = list(dict.fromkeys(t for t, _ in trains))
    typer.echo("trainable parameters by treatment and cut point n:")
    typer.echo(f"  {'treatment':<12}" + "".join(f"{f'n={n}':>12}" for n in study.cut_points))
    for name in names:
        if (name, 0) in trains:
            typer.echo(f"  {name:<12}{trains[name, 0]:>12,}   (every layer, trained from scratch)")
            continue
        typer.echo(f"  {name:<12}" + "".join(f"{trains[name, n]:>12,}" if (name, n) in trains else f"{'-':>12}"
                                             for n in study.cut_points))
    typer.echo("runs:")
    for spec in study.plan:
        typer.echo(f"  {spec.key:<22} {spec.role:<14} n={spec.n}  target {spec.target}  "
                   f"needs {spec.depends_on or '-'}")
    roles = Counter(s.role for s in study.plan)
    epochs = config.train.epochs
    reduced = sorted({study.budget(s).epochs for s in study.plan if s.size is not None} - {epochs})
    if reduced:  # treatments.size_budget = "steps": the full set's steps take more epochs on less data
        span = f"{reduced[0]}" if len(reduced) == 1 else f"{reduced[0]}-{reduced[-1]}"
        budget = (f"{epochs} epochs each on full training sets, {span} on reduced target data (as many "
                  "optimisation steps as the full set)")
    else:
        budget = f"{epochs} epochs each"
    first = study.plan[0]
    budget += (f" ({first.key}: {study.budget(first).steps:,} optimisation steps of batch {config.train.batch_size} on "
               f"{study.train_images(*first.task_key):,} training images)")
    typer.echo(f"{len(study.plan)} runs ({', '.join(f'{v} {k}' for k, v in roles.items())}), "
               f"{budget}, results in {out}")
    cal = dryrun.calibrate(study)
    est = dryrun.estimate_time(study, cal)
    where = (f"with {est.workers} worker process(es)" if config.execution.executor == "local" else
             "in one worker (divide by the cluster's workers)")
    typer.echo(f"time: about {_minutes(est.wall_seconds)} {where}, {_minutes(est.worker_seconds)} of worker time "
               f"(calibrated here: one training step of the whole network {cal.step * 1e3:.0f} ms at batch "
               f"{cal.batch_size}, {cal.numerics} on {cal.device}, {cal.threads} thread(s) per worker); start-up, "
               "data loading and the report come on top")
    if config.train.budget == "plateau":
        typer.echo(f"budget: found on validation plateaus (train.budget = \"plateau\"): the time above is an upper "
                   f"bound, every run at the maximum of train.epochs = {config.train.epochs}; the base networks stop "
                   "at their plateaus and every other run trains as many steps as its task's base")
    flops = dryrun.plan_flops(study)
    typer.echo(f"compute: {_flops(flops)} for {len(study.plan)} networks (training steps at 3x the forward FLOPs of "
               "the layers they train; FlopCounterMode); "
               f"{est.worker_seconds / 3600:,.1f} device-hours of this machine's {cal.device} ({cal.numerics}, "
               f"{cal.threads} thread(s) per worker), {flops / max(est.worker_seconds, 1e-9) / 1e12:.2f} TFLOP/s "
               "as calibrated; run this dry run on the machine that will train to calibrate its device "
               "(execution.device = \"cuda\" for a GPU)")
    typer.echo(f"cluster (docs/cluster.md): `ray start --head --port=6379` on the head node, `ray start "
               f"--address=HEAD:6379` on each worker, then `transferscope run STUDY.toml --executor ray --address "
               f"HEAD:6379 -o {out}`; Ray spreads the {len(study.plan)} networks over its workers, a network's "
               "dependants start when it is recorded")
    busy = dryrun.busy_note()
    if busy:
        typer.echo(f"note: {busy}")
    typer.echo(f"disk: {disk.estimate(study, study.plan).describe(config.eval.save_weights)}; "
               f"{disk.gb(disk.free_bytes(out))} free there")


def _flops(flops: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 100 * 3600:
        return f"{seconds / 3600:.1f} h"
    days = seconds / 86400
    return f"{seconds / 3600:,.0f} h ({days:,.0f} days)" if days < 730 else f"{seconds / 3600:,.0f} h ({days / 365:.1f} years)"


@app.command()
@_user_errors
def status(directory: Annotated[Path, typer.Argument(help="A study's results directory.")]) -> None:
    """Done, pending and failed runs of a study."""
    from transferscope.store import Store
    from transferscope.study import Study

    store = Store(directory)
    study = Study.open(store, images=False)
    recorded = {r.key: r for r in store.records()}
    counts = Counter(recorded[s.key].status if s.key in recorded else "pending" for s in study.plan)
    typer.echo(f"{directory}: {len(study.plan)} runs: " + ", ".join(
        f"{counts[k]} {k}" for k in ("done", "pending", "diverged", "failed", "skipped") if counts[k]))
    for s in study.plan:
        r = recorded.get(s.key)
        if r is not None and r.status != "done":
            error = (r.error or "").strip().splitlines()
            typer.echo(f"  {s.key}: {r.status}" + (f" ({error[0]})" if error else "")
                       + (f" at epoch {r.diverged_epoch}" if r.diverged_epoch else ""))
    outside = sorted(set(recorded) - {s.key for s in study.plan})
    if outside:  # a directory written by hand, or by a version that let a plan shrink
        typer.echo(f"  {len(outside)} recorded run(s) outside the plan in {store.config_path}: {', '.join(outside[:5])}"
                   + (" ..." if len(outside) > 5 else ""))


#: what ``export`` writes: table name -> what a row is
EXPORT_TABLES = {"runs": "one row per run", "history": "one row per run and epoch",
                 "paired": "one row per paired difference, cut point and replicate"}
EXPORT_FORMATS = ("csv", "parquet")


@app.command()
@_user_errors
def export(
    directory: Annotated[Path, typer.Argument(help="A study's results directory.")],
    format: Annotated[str, typer.Option("--format", help="csv, or parquet (needs pyarrow: pip install 'transferscope[parquet]').")] = "csv",
    table: Annotated[list[str], typer.Option("--table", help="runs (one row per run; the default), history (one row per run and epoch) or paired (the paired differences to base per replicate, as the report summarises them); repeatable.")] = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file of one table [default: DIR/<table>.<format>].")] = None,
) -> None:
    """Tables of a study's runs: one row per run (load it in Python with
    transferscope.load_results(DIR)), per run and epoch, or the paired differences."""

    if format not in EXPORT_FORMATS:
        raise UserError(f"--format: unknown format {format!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    tables = list(dict.fromkeys(table or ["runs"]))
    unknown = [t for t in tables if t not in EXPORT_TABLES]
    if unknown:
        raise UserError(f"--table: unknown table {unknown[0]!r}; allowed: {', '.join(EXPORT_TABLES)}")
    if out is not None and len(tables) > 1:
        raise UserError(f"--out names one file but --table names {len(tables)} tables; give one --table with "
                        "--out, or leave --out out to write DIR/<table>.<format>")
    if format == "parquet":
        try:
            importlib.import_module("pyarrow")
        except ImportError:
            raise UserError("--format parquet needs the pyarrow package: pip install 'transferscope[parquet]'") from None
    from transferscope.record import history_frame, runs_frame
    from transferscope.stats import paired_table
    from transferscope.store import Store

    store = Store(directory)
    store.load_config()  # a clear error when this is not a study directory
    records = store.records()
    for name in tables:
        frame = {"runs": runs_frame, "history": history_frame,
                 "paired": lambda recs: paired_table(runs_frame(recs))}[name](records)
        path = out or directory / f"{name}.{format}"
        try:
            frame.to_csv(path, index=False) if format == "csv" else frame.to_parquet(path, index=False)
        except OSError as e:
            raise UserError(f"{'--out' if out else 'export'}: cannot write {path} ({e.strerror or e})") from None
        what = (f"{len(frame)} epochs of {frame['key'].nunique()} runs" if name == "history"
                else f"{len(frame)} {'runs' if name == 'runs' else 'paired differences'}")
        typer.echo(f"{what} -> {path}")


@app.command()
@_user_errors
def report(
    directory: Annotated[Path, typer.Argument(help="A study's results directory.")],
    compare: Annotated[Optional[Path], typer.Option("--compare", help="Another study directory (e.g. the dissimilar split): compare AnB - base with it.")] = None,
    analyses: Annotated[Optional[str], typer.Option("--analyses", help=f"Comma-separated analyses to run [default: the study's report.analyses]: {', '.join(ANALYSES)}.")] = None,
) -> None:
    """(Re)write the report of a study from its recorded runs (report.md and report.html); an
    analysis whose inputs are unchanged is read from DIR/cache/analyses."""

    chosen = None if analyses is None else [a.strip() for a in analyses.split(",") if a.strip()]
    for name in chosen or []:
        if name not in ANALYSES:
            raise UserError(f"--analyses: unknown analysis {name!r}; allowed: {', '.join(ANALYSES)}")
    if (path := current_report(directory, compare, chosen)) is not None:
        typer.echo(f"report: {path} (nothing it reads has changed since it was written)")
        return
    from transferscope.driver import write_study_report
    from transferscope.store import Store

    store = Store(directory)
    store.load_config()  # a clear error when this is not a study directory
    if compare is not None:
        Store(compare).load_config()  # checked before anything is written
    typer.echo(f"report: {write_study_report(store, compare=compare, analyses=chosen)}")


@app.command()
@_user_errors
def estimate(
    directory: Annotated[Path, typer.Argument(help="A study's results directory with trained base networks.")],
    max_features: Annotated[int, typer.Option("--max-features", help="At most this many features per image; wider conv maps are average-pooled.")] = 2048,
    max_images: Annotated[int, typer.Option("--max-images", help="At most this many images per task part.")] = 5000,
    short: Annotated[float, typer.Option("--short", min=0.0, max=1.0, help="Also train a short AnB for this share of an AnB run's steps (0.08 validated; weak on the validation sets). Default 0: none.")] = 0.0,
) -> None:
    """Predict the transfer curve without training it: LogME, H-score and a linear probe of each
    cut point of the base networks for the other task, a stitched base (layer n mapped linearly into
    the target's own base network, fine-tuned for one epoch) and, with --short, a short AnB (the AnB network trained for a
    fraction of its steps); needs only the base networks. Prints how each score has tracked the
    measured curve on the validation sets of docs/estimate.md."""

    from transferscope.analysis.estimate import estimate as estimate_curve
    from transferscope.report import format_estimate

    out = directory / "estimate.csv"
    typer.echo(format_estimate(estimate_curve(directory, max_features=max_features, max_images=max_images,
                                              short=short or None, out=out)))
    typer.echo(f"per network: {out}")


@app.command()
def datasets() -> None:
    """The registered datasets."""
    from transferscope.data import list_datasets

    for name, desc in list_datasets().items():
        typer.echo(f"{name:<14} {desc}")


@app.command()
def models() -> None:
    """The registered architectures: their layers (cut points) and options."""
    from transferscope.models import layer_names, list_models, model_options

    for name, desc in list_models(families=True).items():
        if name.endswith("<name>"):  # a family: its layers depend on the member
            example = name.replace("<name>", "resnet18")
            typer.echo(f"{name:<20} {desc}\n{'':<20} layers: the member's stages, e.g. {example}: "
                       f"{', '.join(layer_names(example))}\n{'':<20} options: {model_options(example)}")
            continue
        names = layer_names(name)
        typer.echo(f"{name:<20} {desc}\n{'':<20} layers: {', '.join(f'{i}={n}' for i, n in enumerate(names, 1))}; "
                   f"cut points 1..{len(names) - 1} (at 32x32 RGB input, default options)\n"
                   f"{'':<20} options: {model_options(name)}")


def main() -> None:
    # SIGTERM and Ctrl-C end a study the same way: worker processes stopped, what is recorded kept,
    # one line saying so
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        app()  # standalone: prints its usage errors and ends with SystemExit
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    _exit(0 if code is None else code)


def _exit(code: int | str) -> None:
    """End the process. Where only the main thread is left, the exit handlers run (Ray's shutdown,
    logging's flush) and the output is flushed, but the interpreter's teardown of every module
    (about a second with torch and matplotlib loaded) is skipped: nothing is left for it to do.
    Under a profiler or a coverage tracer (which write their results as the interpreter ends), the
    ordinary exit."""
    if threading.active_count() > 1 or not isinstance(code, int) or sys.gettrace() or sys.getprofile():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
