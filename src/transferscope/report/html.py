"""``report.html``: the Markdown report as one self-contained HTML page.

Every figure is embedded as a base64 ``data:image/png`` URI and every linked file of the report
folder (layers.csv, ...) as a ``data:`` download, the style sheet is inline, and nothing refers to
another file or the network: the page opens offline, wherever it is copied.

The converter reads the Markdown subset the report is written in: ``#``/``##``/``###``
headings, paragraphs, ``-`` lists, pipe tables, fenced code blocks, images alone on a line
(``![caption](file.png)``, shown as figures), links, ``**bold**``, ``*italic*`` and ``code``.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from transferscope.errors import UserError
from transferscope.report.text import slug

_STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d1d1f;
       margin: 0; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; border-bottom: 2px solid #333; padding-bottom: 6px; }
h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
h3 { font-size: 16px; }
nav { background: #f3f3f3; padding: 10px 18px; border-radius: 6px; font-size: 14px; }
nav ol { margin: 4px 0; padding-left: 20px; columns: 2; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; }
th { background: #f0f0f0; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 90%; }
.reading p { margin: 8px 0; }
footer { color: #777; font-size: 12px; margin-top: 40px; }
"""

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_INLINE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|\*\*(.+?)\*\*|`([^`]+)`|\*([^*\s][^*]*)\*")


def data_uri(path: Path) -> str:
    """The file as a base64 ``data:`` URI."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".md":
        mime = "text/markdown"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class _Converter:
    def __init__(self, base: Path):
        self.base = base

    def _local(self, target: str) -> Path | None:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith(("#", "/")):
            return None
        path = (self.base / target).resolve()
        return path if path.is_file() else None

    def inline(self, text: str) -> str:
        out, pos = [], 0
        for m in _INLINE.finditer(text):
            out.append(html.escape(text[pos : m.start()], quote=False))
            pos = m.end()
            alt, src, label, href, bold, code, italic = m.groups()
            if src is not None:
                out.append(self.image(alt, src))
            elif label is not None:
                out.append(self.link(label, href))
            elif bold is not None:
                out.append(f"<strong>{self.inline(bold)}</strong>")
            elif code is not None:
                out.append(f"<code>{html.escape(code, quote=False)}</code>")
            else:
                out.append(f"<em>{self.inline(italic)}</em>")
        out.append(html.escape(text[pos:], quote=False))
        return "".join(out)

    def image(self, alt: str, src: str) -> str:
        path = self._local(src)
        if path is None:
            raise UserError(f"report.html: image {src!r} is not a file in {self.base}; the page must be self-contained")
        return f'<img src="{data_uri(path)}" alt="{html.escape(alt)}" data-file="{html.escape(src)}">'

    def link(self, label: str, href: str) -> str:
        if href.startswith("#"):
            return f'<a href="{html.escape(href)}">{self.inline(label)}</a>'
        path = self._local(href)
        if path is None:  # an outside address: shown as text, so the page loads nothing
            return f"{self.inline(label)} (<code>{html.escape(href)}</code>)"
        return f'<a href="{data_uri(path)}" download="{html.escape(path.name)}">{self.inline(label)}</a>'

    def table(self, rows: list[str]) -> str:
        def cells(line: str) -> list[str]:
            return [c.strip() for c in line.strip().strip("|").split("|")]

        header, spec, body = cells(rows[0]), cells(rows[1]), [cells(r) for r in rows[2:]]
        right = [s.endswith(":") and not s.startswith(":") for s in spec] + [False] * len(header)
        cls = lambda i: ' class="r"' if right[i] else ""
        out = ["<table><thead><tr>" + "".join(f"<th{cls(i)}>{self.inline(c)}</th>" for i, c in enumerate(header))
               + "</tr></thead><tbody>"]
        for row in body:
            out.append("<tr>" + "".join(f"<td{cls(i)}>{self.inline(c)}</td>" for i, c in enumerate(row)) + "</tr>")
        return "\n".join(out) + "</tbody></table>"

    def convert(self, markdown: str) -> tuple[str, list[tuple[str, str]]]:
        """HTML of the body, and the (anchor, title) of every level-2 heading."""
        lines = markdown.splitlines()
        out: list[str] = []
        toc: list[tuple[str, str]] = []
        i = 0
        para: list[str] = []

        def flush() -> None:
            if para:
                out.append(f"<p>{self.inline(' '.join(para))}</p>")
                para.clear()

        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped.startswith("```"):
                flush()
                lang = stripped[3:].strip()
                block = []
                i += 1
                while i < len(lines) and not lines[i].strip().startswith("```"):
                    block.append(lines[i])
                    i += 1
                cls = f' class="language-{html.escape(lang)}"' if lang else ""
                out.append(f"<pre><code{cls}>{html.escape(chr(10).join(block), quote=False)}</code></pre>")
                i += 1
                continue
            heading = re.match(r"^(#{1,4})\s+(.*)$", stripped)
            if heading:
                flush()
                level, text = len(heading.group(1)), heading.group(2).strip()
                anchor = slug(text)
                if level == 2:
                    toc.append((anchor, text))
                out.append(f'<h{level} id="{anchor}">{self.inline(text)}</h{level}>')
            elif not stripped:
                flush()
            elif (image := _IMAGE.match(stripped)) is not None:
                flush()
                out.append(f"<figure>{self.image(image.group(1), image.group(2))}"
                           f"<figcaption>{self.inline(image.group(1))}</figcaption></figure>")
            elif stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
                flush()
                rows = []
                while i < len(lines) and lines[i].strip().startswith("|"):
                    rows.append(lines[i])
                    i += 1
                out.append(self.table(rows))
                continue
            elif re.match(r"^[-*]\s+", stripped):
                flush()
                items = []
                while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                    item = [re.sub(r"^[-*]\s+", "", lines[i].strip())]
                    i += 1
                    while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() and not re.match(
                            r"^[-*]\s+", lines[i].strip()):
                        item.append(lines[i].strip())
                        i += 1
                    items.append(f"<li>{self.inline(' '.join(item))}</li>")
                out.append("<ul>" + "".join(items) + "</ul>")
                continue
            else:
                para.append(stripped)
            i += 1
        flush()
        return "\n".join(out), toc


def markdown_to_html(markdown: str, base: Path, title: str) -> str:
    """The whole page for ``markdown`` whose files (images, linked tables) lie in ``base``."""
    body, toc = _Converter(Path(base)).convert(markdown)
    entries = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in toc)
    nav = f"<nav><strong>Contents</strong><ol>{entries}</ol></nav>" if toc else ""
    # the contents go after the title (the first heading)
    if body.startswith("<h1"):
        end = body.index("</h1>") + len("</h1>")
        body = body[:end] + "\n" + nav + body[end:]
    else:
        body = nav + body
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body><main>\n{body}\n<footer>Written by transferscope: one self-contained page; figures and tables are "
            "embedded.</footer></main></body></html>\n")


def write_html(markdown: str, out_dir: Path, title: str, name: str = "report.html") -> Path:
    """Write ``markdown`` (a report whose files are in ``out_dir``) as ``out_dir/name``."""
    path = Path(out_dir) / name
    path.write_text(markdown_to_html(markdown, Path(out_dir), title), encoding="utf-8")
    return path
