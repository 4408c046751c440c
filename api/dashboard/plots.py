"""Inline SVG plots for the dashboard: no script, no external asset; colours come from the stylesheet's classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

Series = tuple[str, Sequence[float], str]   # label, values, CSS class


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def line_chart(series: Sequence[Series], labels: Sequence[str], *, title: str, y_max: float | None = None,
               y_format: Callable[[float], str] = lambda v: f"{v:,.0f}", marker: int | None = None,
               width: int = 560, height: int = 180) -> Markup:
    """Lines over shared x labels, with a y grid, the first/middle/last x labels and an optional marked index."""
    left, right, top, bottom = 56, 10, 10, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max((len(values) for _, values, _ in series), default=0)
    peak = y_max if y_max is not None else max((max(values, default=0) for _, values, _ in series), default=0)
    peak = peak or 1

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * min(v, peak) / peak

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for k in range(5):
        v = peak * k / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_num(y(v))}" y2="{_num(y(v))}"/>'
                     f'<text class="tick" x="{left - 6}" y="{_num(y(v) + 4)}" text-anchor="end">{escape(y_format(v))}</text>')
    for i in sorted({0, (n - 1) // 2, n - 1} if n else set()):
        if i < len(labels):
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            parts.append(f'<text class="tick" x="{_num(x(i))}" y="{height - 6}" text-anchor="{anchor}">'
                         f'{escape(labels[i])}</text>')
    if marker is not None and 0 <= marker < n:
        parts.append(f'<line class="marker" x1="{_num(x(marker))}" x2="{_num(x(marker))}" y1="{top}" '
                     f'y2="{top + plot_h}"/>')
    for label, values, css in series:
        points = " ".join(f"{_num(x(i))},{_num(y(v))}" for i, v in enumerate(values))
        parts.append(f'<polyline class="line {escape(css)}" points="{points}"><title>{escape(label)}</title></polyline>')
        if marker is not None and 0 <= marker < len(values):
            parts.append(f'<circle class="dot {escape(css)}" cx="{_num(x(marker))}" cy="{_num(y(values[marker]))}" r="4"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(used: int, total: int, *, title: str, width: int = 180, height: int = 14) -> Markup:
    """A horizontal gauge of used against total."""
    share = min(used / total, 1.0) if total > 0 else (1.0 if used else 0.0)
    css = "fill-high" if share >= 0.9 else "fill"
    return Markup(f'<svg class="meter" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
                  f'<title>{escape(title)}</title><rect class="track" width="{width}" height="{height}" rx="3"/>'
                  f'<rect class="{css}" width="{_num(width * share)}" height="{height}" rx="3"/></svg>')


def stacked_bar(parts: Sequence[tuple[str, int, str]], *, title: str, width: int = 240, height: int = 14) -> Markup:
    """One bar split into coloured parts (label, count, CSS class) in proportion to their counts."""
    total = sum(count for _, count, _ in parts)
    out = [f'<svg class="meter" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
           f'<rect class="track" width="{width}" height="{height}" rx="3"/>']
    at = 0.0
    for label, count, css in parts:
        if count <= 0 or total == 0:
            continue
        w = width * count / total
        out.append(f'<rect class="{escape(css)}" x="{_num(at)}" width="{_num(w)}" height="{height}">'
                   f'<title>{escape(label)}: {count:,}</title></rect>')
        at += w
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(rows: Sequence[tuple[str, Sequence[tuple[str, int, str]]]], *, title: str,
              width: int = 560, row_height: int = 22) -> Markup:
    """Horizontal stacked bars, one per labelled row (e.g. per language or per VMTA), on a shared scale."""
    left, right = 150, 70
    height = max(len(rows), 1) * row_height + 4
    peak = max((sum(c for _, c, _ in parts) for _, parts in rows), default=0) or 1
    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for r, (label, parts) in enumerate(rows):
        top = 2 + r * row_height
        out.append(f'<text class="tick" x="{left - 8}" y="{top + row_height * 0.65:.1f}" text-anchor="end">'
                   f'{escape(label)}</text>')
        at = float(left)
        for part, count, css in parts:
            if count <= 0:
                continue
            w = (width - left - right) * count / peak
            out.append(f'<rect class="{escape(css)}" x="{_num(at)}" y="{top + 3}" width="{_num(w)}" '
                       f'height="{row_height - 6}"><title>{escape(label)} {escape(part)}: {count:,}</title></rect>')
            at += w
        total = sum(c for _, c, _ in parts)
        out.append(f'<text class="tick" x="{_num(at + 6)}" y="{top + row_height * 0.65:.1f}">{total:,}</text>')
    out.append("</svg>")
    return Markup("".join(out))
