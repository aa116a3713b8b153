"""Every study file the documentation shows loads through the real configuration loader: each
```toml block of README.md and docs/*.md, and each examples/*.toml. A block may be a fragment of a
study file (defaults fill the rest), but an unknown key or a wrong type fails here."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from transferscope.config import load_config
from transferscope.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```toml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def toml_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the fence, text) of each ```toml block of a Markdown text."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def markdown_blocks() -> list[tuple[str, str]]:
    """(``file:line``, text) of each ```toml block of README.md and docs/*.md."""
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [(f"{f.relative_to(REPO)}:{line}", text) for f in files if f.is_file()
            for line, text in toml_blocks(f.read_text())]


EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


def test_the_readme_and_examples_have_study_files():
    """The parametrized tests below would pass vacuously if the extraction found nothing."""
    assert any(where.startswith("README.md:") for where, _ in markdown_blocks())
    assert EXAMPLES


@pytest.mark.parametrize("where, text", [pytest.param(w, t, id=w) for w, t in markdown_blocks()])
def test_markdown_toml_block_loads(where, text, tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(text)
    try:
        load_config(study)
    except UserError as e:
        pytest.fail(f"{where}: the ```toml block is not a valid study file: {e}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_study_file_loads(path):
    load_config(path)  # in place: its relative paths are relative to examples/


def test_a_misplaced_key_fails(tmp_path):
    """What this file checks: README's old mistake, ``threads`` under [train], is refused."""
    blocks = toml_blocks("text\n\n```toml\n[train]\nepochs = 3\nthreads = 1\n```\n\n```bash\nls\n```\n")
    assert [line for line, _ in blocks] == [3]
    study = tmp_path / "study.toml"
    study.write_text(blocks[0][1])
    with pytest.raises(UserError, match=r"train\.threads: unknown key"):
        load_config(study)


# ----------------------------------------------------------------- the commands a reader pastes
#: a fence whose commands a reader can paste as they are, from the repository's root, on a machine
#: with the data beside it (../shared): ```bash runnable
RUNNABLE = re.compile(r"^```bash runnable[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: what every `transferscope run` of the docs gets on top, so the tour takes seconds, not minutes:
#: one epoch, one replicate, two cut points, one process, a tiny net
TINY_RUN = ["train.epochs=1", "treatments.replicates=1", "treatments.cut_points=[1,3]", "execution.workers=1",
            "model.options={widths=[8,16],fc=[16]}"]
#: other programs a runnable block may call (unpacking data); anything else is refused, so a
#: block cannot start a server or reach the network
TOOLS = {"unzip", "tar", "mkdir"}


def commands(block: str) -> list[list[str]]:
    """A runnable block as argument lists: continuation lines joined, comments dropped, one
    command a line (no ; && or pipes, so every command's exit code is checked)."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            assert not {";", "&&", "|", "||"} & set(args) and not args[-1].endswith(";"), line
            out.append(args)
    return out


def runnable_blocks() -> list[tuple[str, str]]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [(f"{f.relative_to(REPO)}:{f.read_text().count(chr(10), 0, m.start()) + 1}", m.group(1))
            for f in files for m in RUNNABLE.finditer(f.read_text())]


def test_the_readme_marks_runnable_commands():
    blocks = runnable_blocks()
    assert len(blocks) >= 2 and all(commands(text) for _, text in blocks)
    assert commands("a --x 'y z' \\\n  --w  # note\n\n# only a comment\nb") == [["a", "--x", "y z", "--w"], ["b"]]


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    """Where a reader stands: a copy of examples/ (its relative paths resolve here, not in the
    repository), and ../shared beside it as beside the checkout."""
    root = tmp_path_factory.mktemp("reader")
    (root / "repo").mkdir()
    shutil.copytree(REPO / "examples", root / "repo" / "examples")
    if (REPO.parent / "shared").exists():
        (root / "shared").symlink_to(REPO.parent / "shared")
    return root / "repo"


@pytest.mark.parametrize("where, text", [pytest.param(w, t, id=w) for w, t in runnable_blocks()])
def test_runnable_commands_run(where, text, reader_dir, monkeypatch):
    """Each command of the block, in order, as the reader would paste it (transferscope in this
    process, with TINY_RUN added to every run): exit 0, and each study it runs is whole."""
    from typer.testing import CliRunner

    from transferscope.cli import app
    from transferscope.store import Store

    if "../shared/" in text and not (reader_dir.parent / "shared").exists():
        pytest.skip(f"{where} reads ../shared/data, absent here")
    monkeypatch.chdir(reader_dir)
    for args in commands(text):
        shown = " ".join(args)
        if args[0] in TOOLS:
            done = subprocess.run(args, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{where}: `{shown}` failed: {done.stderr}"
            continue
        assert args[0] == "transferscope", f"{where}: `{shown}`: only transferscope and {sorted(TOOLS)} run here"
        extra = [a for o in TINY_RUN for a in ("--set", o)] if args[1] == "run" else []
        result = CliRunner().invoke(app, [*args[1:], *extra])
        assert result.exit_code == 0, f"{where}: `{shown}` exited {result.exit_code}: {result.output}"
        if args[1] == "run" and "--dry-run" not in args:
            out = Path(args[args.index("-o") + 1])
            records = Store(out).records()
            assert records and {r.status for r in records} == {"done"}, f"{where}: `{shown}`"
            assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
