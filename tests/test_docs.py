"""Every study file the documentation shows loads through the real configuration loader: each
```toml block of README.md and docs/*.md, and each examples/*.toml. A block may be a fragment of a
study file (defaults fill the rest), but an unknown key or a wrong type fails here."""

import re
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
