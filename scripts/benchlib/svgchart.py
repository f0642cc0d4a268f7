"""A dependency-free SVG chart of latency against load (used when matplotlib is absent).

>>> svg = line_chart({"host": [(100.0, 5.0), (200.0, 9.0)]}, "sales/s", "p99 ms", "t")
>>> svg.startswith("<svg") and "host" in svg
True
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT, MARGIN = 720, 420, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
TICKS = 5


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return math.ceil(value / magnitude) * magnitude


def line_chart(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
               title: str) -> str:
    """Series of (x, y) points as polylines with markers, linear axes from zero."""
    points = [p for pts in series.values() for p in pts]
    x_max = _nice_max(max((x for x, _ in points), default=1.0))
    y_max = _nice_max(max((y for _, y in points), default=1.0))
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def sx(x: float) -> float:
        return MARGIN + x / x_max * plot_w

    def sy(y: float) -> float:
        return HEIGHT - MARGIN - y / y_max * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">'
           f'{escape(title)}</text>',
           f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" '
           f'y2="{HEIGHT - MARGIN}" stroke="black"/>',
           f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" '
           'stroke="black"/>']
    for i in range(TICKS + 1):
        xv, yv = x_max * i / TICKS, y_max * i / TICKS
        out.append(f'<text x="{sx(xv)}" y="{HEIGHT - MARGIN + 16}" text-anchor="middle">'
                   f'{xv:g}</text>')
        out.append(f'<text x="{MARGIN - 6}" y="{sy(yv) + 4}" text-anchor="end">{yv:g}</text>')
        out.append(f'<line x1="{MARGIN}" y1="{sy(yv)}" x2="{WIDTH - MARGIN}" y2="{sy(yv)}" '
                   'stroke="#eee"/>')
    out.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
               f'{escape(x_label)}</text>')
    out.append(f'<text x="15" y="{HEIGHT / 2}" transform="rotate(-90 15 {HEIGHT / 2})" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>'
                for x, y in pts]
        out.append(f'<text x="{WIDTH - MARGIN - 150}" y="{MARGIN + 16 * i}" fill="{colour}">'
                   f'{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
