"""report.html: one self-contained page, checked by its converter and by rendering it in a real
headless browser (Debian's chromium; the browser tests skip where it is not installed)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from transferscope.errors import UserError
from transferscope.report.html import markdown_to_html

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

TINY = ["train.epochs=3", "treatments.replicates=2", "model.options={widths=[8,16],fc=[16]}",
        "treatments.cut_points=[1,2]", "execution.workers=1", "treatments.target_sizes=[0.2]"]
SECTIONS = ("study", "metric", "reading", "figures", "per-layer-table", "decomposition",
            "was-the-study-trained-long-enough", "representation-similarity-cka",
            "predicting-the-curve-without-training", "first-layer-filters", "freeze-or-fine-tune-by-target-size",
            "provenance")


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


needs_browser = pytest.mark.skipif(
    _browser() is None, reason="headless browser test needs Debian's chromium (apt-get install -y chromium)")


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def of(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


# --------------------------------------------------------------------------------- converter


def test_converter_subset(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG_1PX)
    (tmp_path / "t.csv").write_text("x,y\n1,2\n")
    md = ("# Title\n\n## A section\n\nSome **bold**, *it*, `code <x>` & [the csv](t.csv), [out](https://example.org), "
          "[back](#a-section).\n\n- one\n- two **2**\n\n| k | v |\n|:--|--:|\n| a | 1 < 2 |\n\n"
          "![A *figure*](a.png)\n\n```toml\nname = \"<s>\"\n```\n\n## Second: <b>raw</b>\n\n### Deeper\n\n"
          "Text <script>alert(1)</script> and an inline ![icon](a.png).\n")
    page = markdown_to_html(md, tmp_path, "T")
    tags = _parse(page)
    assert [a["id"] for a in tags.of("h1")] == ["title"] and [a["id"] for a in tags.of("h3")] == ["deeper"]
    assert [a["id"] for a in tags.of("h2")] == ["a-section", "second-b-raw-b"]
    assert [a["src"] for a in tags.of("img")] == ["data:image/png;base64," + base64.b64encode(PNG_1PX).decode()] * 2
    assert [a["data-file"] for a in tags.of("img")] == ["a.png", "a.png"] and tags.of("img")[0]["alt"] == "A figure"
    hrefs = [a["href"] for a in tags.of("a")]
    assert "data:text/csv;base64," + base64.b64encode(b"x,y\n1,2\n").decode() in hrefs
    assert [a.get("download") for a in tags.of("a") if a["href"].startswith("data:")] == ["t.csv"]
    assert "#a-section" in hrefs and not any(h.startswith("http") for h in hrefs)
    assert ", out (<code>https://example.org</code>)," in page  # shown, never fetched
    assert "<strong>bold</strong>" in page and "<em>it</em>" in page and "<code>code &lt;x&gt;</code>" in page
    assert '<th style="text-align:left">k</th>' in page and '<td style="text-align:right">1 &lt; 2</td>' in page
    assert "<li>two <strong>2</strong></li>" in page
    assert 'class="language-toml">name = &quot;&lt;s&gt;&quot;' in page
    # an image alone in its paragraph is a figure with its caption; one inside a sentence is not
    assert len(tags.of("figure")) == 1 and "<figcaption>A <em>figure</em></figcaption>" in page
    assert not tags.of("script") and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<b>" not in page
    # the contents, after the title: every level-2 heading, in order
    assert page.index("</h1>") < page.index("<nav>") < page.index('<h2 id="a-section">')
    assert ('<nav><strong>Contents</strong><ol><li><a href="#a-section">A section</a></li>'
            '<li><a href="#second-b-raw-b">Second: &lt;b&gt;raw&lt;/b&gt;</a></li></ol></nav>') in page
    assert page.count("<footer>") == 1 and "<title>T</title>" in page


def test_the_template_ships_as_package_data() -> None:
    """A non-editable install carries report/templates/ only where pyproject's package-data names it."""
    import tomllib
    from importlib.resources import files

    import transferscope

    pyproject = Path(transferscope.__file__).parents[2] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("an installed copy: no pyproject.toml beside the package")
    declared = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["transferscope.report"]
    templates = sorted(p.name for p in (files("transferscope.report") / "templates").iterdir())
    assert "report.html.j2" in templates
    assert all(any(Path("templates", name).match(pattern) for pattern in declared) for name in templates)


def test_converter_refuses_a_missing_image(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="self-contained"):
        markdown_to_html("![x](missing.png)\n", tmp_path, "T")
    with pytest.raises(UserError, match="self-contained"):
        markdown_to_html("![x](https://example.org/a.png)\n", tmp_path, "T")


# ------------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """A tiny study, analysed and reported as study.write_study_report does once wired."""
    from transferscope.report import analyze_study
    from transferscope.config import load_config
    from transferscope.report import ReportMeta, write_report
    from transferscope.store import Store
    from transferscope.driver import run_study

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("html") / "study"
    run_study(load_config(None, TINY), out, progress=False, report=False)
    store = Store(out)
    analysis = analyze_study(store, out_dir=out / "report")
    assert analysis.notes == []
    frame = store.frame()
    meta = ReportMeta(dataset="digits", split="random 5/5", arch="convnet", replicates=2, num_layers=4,
                      cut_points=(1, 2), extra_lines=("Provenance: test.",))
    write_report(frame[frame["target_size"].isna()], meta, out / "report", analysis=analysis)
    return out / "report"


def test_report_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    tags = _parse(page)
    ids = {a.get("id") for t, a in tags.tags}
    for section in SECTIONS:
        assert section in ids, section
    images = tags.of("img")
    figures = {"fig2.png", "fig3.png", "convergence.png", "cka_layers.png", "cka_heatmap.png", "estimate.png",
               "filters.png", "target_sizes.png", "freeze_map.png", "finetune_curve.png"}
    assert {a["data-file"] for a in images} == figures
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not tags.of("script") and not tags.of("link") and not tags.of("iframe")
    for tag, attrs in tags.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, attrs[key][:80])
    text = "".join(tags.text)
    assert "What the numbers show" in text and "Git commits of the runs" in text and "[treatments]" in text


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp / 'profile'}", *args],
        check=False, capture_output=True, text=True, timeout=120, env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})


@needs_browser
def test_report_renders_in_a_headless_browser(report_dir: Path, tmp_path: Path) -> None:
    url = (report_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    proc = _chromium("--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,3000", url, tmp=tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 0.05  # not a blank page
    ink = (pixels.mean(axis=2) < 0.9).mean()
    assert ink > 0.03, f"only {ink:.1%} of the page is not white"
    colour = (pixels.max(axis=2) - pixels.min(axis=2) > 0.2).mean()
    assert colour > 0.005, "no coloured pixels: the figures did not render"

    dom = _chromium("--dump-dom", url, tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tags = _parse(dom.stdout)
    ids = {a.get("id") for t, a in tags.tags}
    for section in SECTIONS:
        assert section in ids, section
    images = tags.of("img")
    assert len(images) == 10 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    for tag, attrs in tags.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, attrs[key][:80])
    assert len(tags.of("table")) >= 6 and "Spearman" in "".join(tags.text)


def test_figures_not_blank(report_dir: Path) -> None:
    for name in ("cka_layers.png", "cka_heatmap.png", "estimate.png", "filters.png", "target_sizes.png",
                 "convergence.png"):
        image = matplotlib.image.imread(report_dir / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, name
        assert np.asarray(image).std() > 0.05, name


def repeated_paragraphs(markdown: str, longer_than: int = 60) -> list[str]:
    """Lines of prose (not a table row, heading or fenced code) longer than ``longer_than``
    characters that appear more than once."""
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and len(line) > longer_than and not line.startswith(("|", "#")):
            seen[line] = seen.get(line, 0) + 1
    return [line for line, count in seen.items() if count > 1]


def test_every_paragraph_once(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text(encoding="utf-8")
    assert repeated_paragraphs(text) == []
    assert text.count("**Head start?**") == 1 and text.count("## Provenance") == 1
    assert text.count("- This report:") == 1 and "- This report: the runs' commit (dirty: " in text  # the sha once
    assert repeated_paragraphs("A line long enough to count as a paragraph of the report, surely.\n\n| x |\n\n"
                               "A line long enough to count as a paragraph of the report, surely.\n")


def test_every_paragraph_once_with_a_comparison(report_dir: Path, tmp_path: Path) -> None:
    """The comparison's claim is in the Reading; its section holds the tables (it said the claim again)."""
    from transferscope.report import ReportMeta, analyze_study, write_report
    from transferscope.store import Store

    study = report_dir.parent
    analysis = analyze_study(Store(study), out_dir=tmp_path, compare=study, analyses=["comparison"])
    assert [s.title for s in analysis.sections] == ["Comparison with another study"]
    frame = Store(study).frame()
    meta = ReportMeta(dataset="digits", split="random 5/5", arch="convnet", replicates=2, num_layers=4,
                      cut_points=(1, 2))
    text = write_report(frame[frame["target_size"].isna()], meta, tmp_path, analysis=analysis).read_text()
    assert repeated_paragraphs(text) == []
    assert text.count(analysis.comparison.sentence()) == 1 and "a: study [a]" in text
