"""The report's analyses: chosen by name, cached by their inputs, and their progress lines.

What was recomputed is read from the cache's own record (``AnalysisCache.hits`` / ``misses``) and,
for the slowest analysis, by counting calls of the real function; never from timings.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys

import pytest
from conftest import TINY
from typer.testing import CliRunner

from transferscope.analysis.cache import CACHE_DIR, STAMP, AnalysisCache, current_report
from transferscope.config import ANALYSES, ReportConfig, load_config
from transferscope.driver import run_study, write_study_report
from transferscope.progress import Progress, ReportProgress
from transferscope.report import analyze_study
from transferscope.report import sections as sections_module
from transferscope.store import Store
from transferscope.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

#: the analyses of these tests: all but CKA (the estimate stands for the analyses that read images)
CHOSEN = ["convergence", "estimate", "filters", "target_sizes"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A tiny finished study (one cut point), reported once with the cache (treat as read-only)."""
    out = tmp_path_factory.mktemp("cache") / "study"
    run_study(load_config(None, [*TINY, "treatments.cut_points=[1]", "execution.workers=1"]), out, progress=False,
              report=False)
    first = AnalysisCache(out)
    write_study_report(Store(out), analyses=CHOSEN, progress=False, cache=first)
    assert first.misses == CHOSEN and first.hits == []
    return out


@pytest.fixture
def study(reported, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(reported, copy)  # copy2: sizes and modification times kept, so the cache is valid
    return copy


def _report(directory, **kwargs) -> AnalysisCache:
    cache = AnalysisCache(directory)
    write_study_report(Store(directory), analyses=kwargs.pop("analyses", CHOSEN), progress=False, cache=cache,
                       **kwargs)
    return cache


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "report").iterdir())}


def test_a_second_report_on_an_unchanged_study_recomputes_nothing(study, monkeypatch) -> None:
    before = _files(study)
    calls = []
    real = sections_module.estimate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sections_module, "estimate", counted)
    assert current_report(study, analyses=CHOSEN) == study / "report" / "report.md"
    cache = _report(study)
    assert cache.from_stamp and cache.misses == [] and cache.hits == []  # no analysis even looked up
    (study / CACHE_DIR / STAMP).unlink()  # without the stamp, each analysis is served from its own entry
    cache = _report(study)
    assert not cache.from_stamp and cache.misses == [] and cache.hits == [*CHOSEN, "report"]
    assert calls == []  # the estimate (LogME, H-score, probe) was not run again
    assert _files(study) == before  # and the report's files are what the first report wrote
    assert current_report(study, analyses=CHOSEN) is not None  # stamped again


def _later(path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_the_stamp_sees_every_input_of_the_report(study, tmp_path, monkeypatch) -> None:
    from transferscope.analysis import cache as cache_module

    assert current_report(study, analyses=CHOSEN) is not None
    assert current_report(study, analyses=["convergence"]) is None  # other analyses asked for
    assert current_report(study) is None  # (the study's report.analyses, which were not the ones reported)
    for name in ("runs/r0-AnB-n1.json", "weights/r0-baseA.safetensors", "config.toml", "report/report.html"):
        other = tmp_path / name.replace("/", "_")
        shutil.copytree(study, other)
        _later(other / name)
        assert current_report(other, analyses=CHOSEN) is None, name
    gone = tmp_path / "gone"
    shutil.copytree(study, gone)
    (gone / "report" / "report.html").unlink()
    assert current_report(gone, analyses=CHOSEN) is None
    assert current_report(study, compare=gone, analyses=CHOSEN) is None  # a comparison is another report
    monkeypatch.setattr(cache_module, "code_identity", lambda: "another version of transferscope")
    assert current_report(study, analyses=CHOSEN) is None


def test_an_unchanged_report_is_answered_before_torch_is_imported(study) -> None:
    code = ("import sys\nfrom transferscope.cli import app\ntry:\n    app(['report', sys.argv[1], '--analyses', "
            f"'{','.join(CHOSEN)}'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch imported:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(study)], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == [
        f"report: {study / 'report' / 'report.md'} (nothing it reads has changed since it was written)",
        "exit 0", "torch imported: False"], out.stderr


def test_touching_a_weights_file_recomputes_only_the_analyses_that_read_weights(study) -> None:
    weights = study / "weights" / "r0-baseA.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    cache = _report(study)
    assert cache.misses == ["estimate", "filters"]
    assert cache.hits == ["convergence", "target_sizes"]  # the report itself is written again: not a hit
    again = _report(study)  # and the report is current again: answered from its stamp
    assert again.from_stamp and again.misses == [] and again.hits == []


def test_a_new_run_record_recomputes_the_analyses_that_read_records(study) -> None:
    path = study / "runs" / "r0-AnB-n1.json"
    path.write_text(path.read_text())  # rewritten: same content, a new modification time
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    cache = _report(study)
    assert sorted(cache.misses) == sorted(CHOSEN) and cache.hits == []


def test_a_deleted_report_folder_is_restored_from_the_cache(study) -> None:
    before = _files(study)
    shutil.rmtree(study / "report")
    cache = _report(study)
    assert cache.misses == [] and cache.hits == [*CHOSEN, "report"]
    assert _files(study) == before


def test_a_damaged_cache_file_is_a_miss(study) -> None:
    (study / CACHE_DIR / STAMP).unlink()
    (study / CACHE_DIR / "filters.pkl").write_bytes(b"not a pickle")
    cache = _report(study)
    assert cache.misses == ["filters"] and "convergence" in cache.hits
    assert _report(study).misses == []


def test_analyses_are_chosen_by_name_or_by_the_study_config(study) -> None:
    a = analyze_study(study, analyses=["convergence"])
    assert [s.title for s in a.sections] == ["Was the study trained long enough?"]
    assert "not computed (not among the analyses asked for): CKA, estimate, filters, target sizes" in a.notes
    opened = Study.open(Store(study), images=False)
    config = opened.config.model_copy(update={"report": ReportConfig(analyses=("filters", "target_sizes"))})
    b = analyze_study(study, dataclasses.replace(opened, config=config))
    assert [s.title for s in b.sections] == ["First-layer filters", "Freeze or fine-tune, by target size"]
    assert "not computed (report.analyses leaves them out): convergence, CKA, estimate" in b.notes
    assert opened.data is None  # nothing that reads images ran: the dataset was never loaded


def test_report_analyses_option_refuses_an_unknown_name_before_writing(study) -> None:
    from transferscope.cli import app

    shutil.rmtree(study / "cache")
    result = CliRunner().invoke(app, ["report", str(study), "--analyses", "convergence,sizes"])
    assert result.exit_code == 2
    assert result.output.strip() == ("transferscope: error: --analyses: unknown analysis 'sizes'; allowed: "
                                     + ", ".join(ANALYSES))
    assert not (study / "cache").exists()


# ---------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_report_progress_lines_name_the_analysis_how_far_and_time_left() -> None:
    out = io.StringIO()  # not a terminal: one plain line per finished analysis, as before
    p = ReportProgress(["convergence", "CKA"], {"convergence": 0.0, "CKA": 30.0}, stream=out)
    p.started("convergence")
    p.finished("convergence", 0.2, cached=True)
    p.started("CKA")
    p.step(1, 2, "replicate and target")  # a step redraws the terminal line only
    p.finished("CKA", 12.0, cached=False)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("report [1/2] convergence: unchanged inputs, from the cache | elapsed 0:00 | left ~0:30")
    assert lines[1].startswith("report [2/2] CKA: 12.0 s | elapsed ") and lines[1].endswith("| left ~0:00")
    assert len(lines) == 2
    term = _Terminal()
    t = ReportProgress(["CKA"], {"CKA": None}, stream=term)
    t.started("CKA")
    t.step(1, 4, "replicate and target")
    t.finished("CKA", 1.0, cached=False)
    text = term.getvalue()
    assert "\r" in text and "\x1b[2K" in text  # redrawn in place
    assert "CKA: replicate and target 1/4" in text and text.endswith("left ~0:00\n")


def test_study_progress_writes_the_same_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(2, 4, stream=out)
    bar.message("hello")
    bar.run_started("r0-baseA", 2)
    bar.epoch_done(1, {"val_top1": 0.5})  # an epoch is not a line off a terminal
    bar.run_finished("r0-baseA", "done", 0.625)
    lines = out.getvalue().splitlines()
    assert lines[0] == "hello"
    assert lines[1].startswith("[1/2] r0-baseA: test top-1 0.625 | elapsed 0:00 | left ~") and len(lines) == 2
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert Progress(1, 1, stream=io.StringIO(), enabled=False).tty is False
