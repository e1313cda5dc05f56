"""Small charts as inline SVG: horizontal bar charts and (stacked) histograms with axes, ticks,
axis labels and a title, for a report that must open without a server or a network.

Text stays text (<text> elements, the page's font), so a chart reads like the page around it
and its numbers can be selected; every chart has a <title> and an aria-label for screen readers.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#718096")
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k; at least 1 for
    counts)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, step)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt_tick(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return str(int(v))
    return f"{v:g}"


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}" {FONT} '
            f'font-size="12">'
            f'<title>{_e(title)}</title>'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>'
            f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14" '
            f'font-weight="600">{_e(title)}</text>' + "".join(body) + "</svg>")


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, xlabel: str,
              value_format: str = "{:.2f}", width: int = 640, colors: Sequence[str] | None = None) -> str:
    """Horizontal bars, one per label, with the value printed at the end of each bar."""
    labels = [str(x) for x in labels]
    values = [float(v) for v in values]
    row_h = 24
    left = min(260, 12 + 7 * max([len(x) for x in labels] or [4]))
    right = 70
    top, bottom = 34, 44
    height = top + bottom + row_h * max(1, len(labels))
    plot_w = width - left - right
    body: list[str] = []
    if not labels:
        body.append(f'<text x="{width / 2:.1f}" y="{top + 16}" text-anchor="middle" '
                    f'fill="#555">no data</text>')
        return _frame(width, height, title, body)
    ticks = nice_ticks(0.0, max(values + [0.0]) or 1.0,
                       integer=all(float(v).is_integer() for v in values))
    hi = ticks[-1] or 1.0
    x = lambda v: left + plot_w * (v / hi)  # noqa: E731
    y0, y1 = top, top + row_h * len(labels)
    for t in ticks:
        body.append(f'<line x1="{x(t):.1f}" y1="{y0}" x2="{x(t):.1f}" y2="{y1}" stroke="#e2e8f0"/>')
        body.append(f'<text x="{x(t):.1f}" y="{y1 + 15}" text-anchor="middle" fill="#333">'
                    f'{_e(_fmt_tick(t))}</text>')
    for i, (lab, v) in enumerate(zip(labels, values)):
        yy = top + i * row_h
        color = (colors or PALETTE)[i % len(colors or PALETTE)] if colors else PALETTE[0]
        w = max(0.0, x(v) - left)
        body.append(f'<rect class="bar" x="{left}" y="{yy + 4}" width="{max(w, 1.0):.1f}" '
                    f'height="{row_h - 8}" fill="{color}"><title>{_e(lab)}: '
                    f'{_e(value_format.format(v))}</title></rect>')
        body.append(f'<text x="{left - 6}" y="{yy + row_h / 2 + 4:.1f}" text-anchor="end" '
                    f'fill="#1a202c">{_e(lab)}</text>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{yy + row_h / 2 + 4:.1f}" fill="#1a202c">'
                    f'{_e(value_format.format(v))}</text>')
    body.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="#333"/>')
    body.append(f'<line x1="{left}" y1="{y1}" x2="{left + plot_w}" y2="{y1}" stroke="#333"/>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
                f'fill="#333">{_e(xlabel)}</text>')
    return _frame(width, height, title, body)


def histogram(title: str, edges: Sequence[float], series: dict[str, Sequence[int]], *,
              xlabel: str, ylabel: str = "segments", marker: tuple[float, str] | None = None,
              width: int = 640, height: int = 300) -> str:
    """Stacked bars over bins [edges[i], edges[i+1]) with a legend; `marker` draws a labelled
    vertical line (a threshold) at an x value."""
    left, right, top, bottom = 56, 16, 34 + (18 if len(series) > 1 else 0), 46
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(edges) - 1
    body: list[str] = []
    totals = [sum(s[i] for s in series.values()) for i in range(n)]
    if n <= 0 or not any(totals):
        body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
                    f'stroke="#333"/><text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
                    f'text-anchor="middle" fill="#555">no data</text>')
        return _frame(width, height, title, body)
    lo, hi = float(edges[0]), float(edges[-1])
    x = lambda v: left + plot_w * (v - lo) / (hi - lo)  # noqa: E731
    yt = nice_ticks(0.0, float(max(totals)), 4, integer=True)
    ymax = yt[-1] or 1.0
    y = lambda v: top + plot_h * (1 - v / ymax)  # noqa: E731
    for t in yt:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" '
                    f'stroke="#e2e8f0"/><text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
                    f'fill="#333">{_e(_fmt_tick(t))}</text>')
    for t in nice_ticks(lo, hi, 6):
        if lo - 1e-9 <= t <= hi + 1e-9:
            body.append(f'<line x1="{x(t):.1f}" y1="{top + plot_h}" x2="{x(t):.1f}" '
                        f'y2="{top + plot_h + 4}" stroke="#333"/><text x="{x(t):.1f}" '
                        f'y="{top + plot_h + 16}" text-anchor="middle" fill="#333">'
                        f'{_e(_fmt_tick(t))}</text>')
    for i in range(n):
        base = 0
        for k, (name, counts) in enumerate(series.items()):
            c = int(counts[i])
            if c <= 0:
                continue
            x0, x1 = x(edges[i]), x(edges[i + 1])
            body.append(f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{y(base + c):.1f}" '
                        f'width="{max(1.0, x1 - x0 - 1):.1f}" height="{y(base) - y(base + c):.1f}" '
                        f'fill="{PALETTE[k % len(PALETTE)]}"><title>{_e(name)} '
                        f'[{edges[i]:g}, {edges[i + 1]:g}): {c}</title></rect>')
            base += c
    if marker is not None and lo <= marker[0] <= hi:
        mx = x(marker[0])
        body.append(f'<line class="marker" x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" '
                    f'y2="{top + plot_h}" stroke="#c53030" stroke-width="2" stroke-dasharray="5,3"/>'
                    f'<text x="{mx + 4:.1f}" y="{top + 12}" fill="#c53030">{_e(marker[1])}</text>')
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>'
                f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
                f'stroke="#333"/>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" '
                f'fill="#333">{_e(xlabel)}</text>')
    body.append(f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" fill="#333" '
                f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{_e(ylabel)}</text>')
    if len(series) > 1:
        lx = left
        for k, name in enumerate(series):
            body.append(f'<rect x="{lx}" y="{top - 22}" width="12" height="12" '
                        f'fill="{PALETTE[k % len(PALETTE)]}"/><text x="{lx + 16}" y="{top - 12}" '
                        f'fill="#1a202c">{_e(name)}</text>')
            lx += 30 + 7 * len(name)
    return _frame(width, height, title, body)


def bins(values: Sequence[float], lo: float, hi: float, step: float) -> tuple[list[float], list[int]]:
    """Edges and counts; values outside [lo, hi] go to the first / last bin."""
    n = max(1, int(math.ceil((hi - lo) / step - 1e-9)))
    edges = [round(lo + i * step, 10) for i in range(n + 1)]
    counts = [0] * n
    for v in values:
        if v is None or not math.isfinite(v):
            continue
        i = int((v - lo) // step)
        counts[min(n - 1, max(0, i))] += 1
    return edges, counts
