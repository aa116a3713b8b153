"""``report.html``: the Markdown report as one self-contained HTML page.

markdown-it-py parses the report (CommonMark with pipe tables; raw HTML in the Markdown is shown
as text) and the page around it is the Jinja2 template ``templates/report.html.j2`` (package data).
What the page adds to plain CommonMark, by rules on markdown-it's tokens and renderer:

- every heading gets an ``id``, :func:`~transferscope.report.text.slug` of its text (the anchors the
  report's own links use), and the level-2 headings are listed as contents after the title;
- an image alone in a paragraph is a figure with its alt text as caption;
- every image is embedded as a base64 ``data:image/png`` URI and every linked file of the report
  folder (layers.csv, ...) as a ``data:`` download; an outside address is shown as text, never
  loaded. Nothing refers to another file or the network: the page opens offline, wherever it is
  copied. An image that is not a file of the report folder is refused (:class:`UserError`).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markupsafe import Markup

from transferscope.errors import UserError
from transferscope.report.text import slug

_TEMPLATES = Environment(loader=PackageLoader("transferscope.report", "templates"),
                         autoescape=select_autoescape(["j2"]), keep_trailing_newline=True)


def data_uri(path: Path) -> str:
    """The file as a base64 ``data:`` URI."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".md":
        mime = "text/markdown"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _local(base: Path, target: str) -> Path | None:
    """The file of the report folder ``target`` names; None for an address, an anchor, an absolute
    path or a file that is not there."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
        return None
    path = (base / target).resolve()
    return path if path.is_file() else None


def _anchors_and_figures(state: StateCore) -> None:
    """Core rule: an ``id`` on every heading; a paragraph holding one image becomes a figure."""
    tokens = state.tokens
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            token.attrSet("id", slug(tokens[i + 1].content))
        elif (token.type == "paragraph_open" and tokens[i + 1].children
              and [c.type for c in tokens[i + 1].children] == ["image"]):
            token.tag = tokens[i + 2].tag = "figure"
            tokens[i + 1].children[0].meta["caption"] = True


def _parser(base: Path) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.core.ruler.push("anchors_and_figures", _anchors_and_figures)

    def image(self, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        path = _local(base, src)
        if path is None:
            raise UserError(f"report.html: image {src!r} is not a file in {base}; the page must be self-contained")
        caption = self.renderInline(token.children or [], options, env)
        alt = self.renderInlineAsText(token.children or [], options, env)
        img = f'<img src="{data_uri(path)}" alt="{html.escape(alt)}" data-file="{html.escape(src)}">'
        return img + (f"<figcaption>{caption}</figcaption>" if token.meta.get("caption") else "")

    def link_open(self, tokens, idx, options, env) -> str:
        href = str(tokens[idx].attrGet("href") or "")
        path = None if href.startswith("#") else _local(base, href)
        outside = not href.startswith("#") and path is None
        env.setdefault("links", []).append(href if outside else None)
        if outside:  # shown as text, so the page loads nothing
            return ""
        if path is None:
            return f'<a href="{html.escape(href)}">'
        return f'<a href="{data_uri(path)}" download="{html.escape(path.name)}">'

    def link_close(self, tokens, idx, options, env) -> str:
        outside = env["links"].pop()
        return "</a>" if outside is None else f" (<code>{html.escape(outside)}</code>)"

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    md.add_render_rule("link_close", link_close)
    return md


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """The whole page for ``markdown`` whose files (images, linked tables) lie in ``base``."""
    md = _parser(Path(base))
    tokens = md.parse(markdown)
    contents = [(t.attrGet("id"), tokens[i + 1].content) for i, t in enumerate(tokens)
                if t.type == "heading_open" and t.tag == "h2"]
    head = 3 if tokens and tokens[0].type == "heading_open" and tokens[0].tag == "h1" else 0  # the title
    render = lambda part: Markup(md.renderer.render(part, md.options, {}))  # noqa: E731
    return _TEMPLATES.get_template("report.html.j2").render(
        title=title, heading=render(tokens[:head]), contents=contents, body=render(tokens[head:]))


def write_html(markdown: str, out_dir: Path, title: str, name: str = "report.html") -> Path:
    """Write ``markdown`` (a report whose files are in ``out_dir``) as ``out_dir/name``."""
    path = Path(out_dir) / name
    path.write_text(markdown_to_html(markdown, Path(out_dir), title), encoding="utf-8")
    return path
