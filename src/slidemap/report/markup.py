"""HTML pieces and number formats shared by every section of a report.

One function per kind of number, used everywhere, so that the same quantity reads the same in
the cards, the summaries and the tables: areas in whole square metres with thousands separators
(hectares to two decimals beside totals), probabilities to two decimals, metrics to four.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

import numpy as np

from slidemap.errors import SlidemapError

Rows = list[tuple[str, object]]


class Html(str):
    """Text that is already HTML (formatted and escaped): table helpers insert it as it is."""


def square_metres(value: float) -> Html:
    """``12,345 m²``; below 1 m² (a fraction of a pixel of a fine raster) ``< 1 m²``."""
    if not np.isfinite(value):
        return Html("n/a")
    return Html("&lt; 1 m²" if 0 < value < 1 else f"{value:,.0f} m²")


def hectares(value_m2: float) -> Html:
    return Html(f"{value_m2 / 1e4:,.2f} ha" if np.isfinite(value_m2) else "n/a")


def area(value_m2: float) -> Html:
    """An area total: ``56,599 m² (5.66 ha)``."""
    return Html(f"{square_metres(value_m2)} ({hectares(value_m2)})")


def probability(value: float) -> Html:
    return Html(f"{value:.2f}" if np.isfinite(value) else "n/a")


def text(value: object) -> str:
    """A value as table text: ints grouped, floats to 4 decimals, NaN as n/a."""
    if isinstance(value, Html):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        out = "—"
    elif isinstance(value, bool):
        out = str(value)
    elif isinstance(value, int):
        out = f"{value:,}"
    elif isinstance(value, float):
        if not np.isfinite(value):
            out = "n/a"
        elif 0 < abs(value) < 1e-3:
            out = f"{value:.3g}"
        else:
            out = f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    elif isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    else:
        out = str(value)
    return escape(out)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlidemapError(f"{path} is not valid JSON ({exc}): re-run the command that wrote "
                            "it") from exc
    return data if isinstance(data, dict) else {}


def pairs(rows: Rows) -> str:
    cells = "".join(f"<tr><th>{escape(str(k))}</th><td{_align(v)}>{text(v)}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


def _align(value: object) -> str:
    """Numbers right-aligned so that their digits line up; text (paths) left as it reads."""
    numeric = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    return " class='num'" if numeric or isinstance(value, Html) else ""


def grid(columns: list[str], rows: list[list[str]], caption: str = "") -> str:
    """A table of already formatted cells, right-aligned."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='num'>{v}</td>" for v in row) + "</tr>"
                   for row in rows)
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<tr>{head}</tr>{body}</table>"


def image(picture: bytes, caption: str, css: str = "", mime: str = "image/png") -> str:
    data = base64.b64encode(picture).decode("ascii")
    kind = f" class='{css}'" if css else ""
    return (f"<figure{kind}><img src='data:{mime};base64,{data}' alt='{escape(caption)}'>"
            f"<figcaption>{escape(caption)}</figcaption></figure>")
