"""The report's HTML: small builders for a self-contained page (inline CSS, no script, no external URL)."""

from __future__ import annotations

from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 9px; border: 1px solid #ddd; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.tiles td, table.tiles th { border: none; padding: 2px; text-align: center; vertical-align: middle; }
img { image-rendering: auto; display: block; } p.note { color: #8a4b00; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def note(text: str) -> str:
    """A line saying why a part is left out."""
    return f'<p class="note">{escape(text)}</p>'


def para(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def section(title: str, *body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n" + "\n".join(body) + "\n</section>"


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def cell(value) -> str:
    """A table cell: numbers right-aligned with sensible digits, None as a dash, text escaped."""
    if value is None:
        return "<td>&ndash;</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>' if abs(value) < 1e4 else f'<td class="num">{value:,.0f}</td>'
    return f"<td>{escape(str(value))}</td>"


def table(header: list[str] | None, rows: list[list], css: str = "") -> str:
    """A table with one header row (none when None); cells through `cell` (raw HTML cells: pass ('html', text))."""
    head = f"<tr>{''.join(f'<th>{escape(h)}</th>' for h in header)}</tr>" if header else ""

    def one(v):
        return f"<td>{v[1]}</td>" if isinstance(v, tuple) and v and v[0] == "html" else cell(v)

    body = "\n".join("<tr>" + "".join(one(v) for v in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}>{head}\n{body}</table>"


def video(uri: str, mime: str, caption: str) -> str:
    """An inline video (muted so it may play on its own; controls for the sound)."""
    return (f'<video controls loop muted autoplay playsinline preload="auto">'
            f'<source src="{uri}" type="{mime}">your browser does not play {escape(mime)}</video>'
            f"<p>{escape(caption)}</p>")


def details(summary: str, text: str) -> str:
    """A folded block of preformatted text."""
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


def page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n"
            + "\n".join(sections) + "\n</body></html>\n")
