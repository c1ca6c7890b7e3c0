"""The cutover timeline drawn as inline SVG plus HTML tables: no script, no external resource.

One time axis holds three lanes: requests per second stacked by serving upstream, the maximum latency
per bucket of each upstream (log scale), and failures (a bar per bucket plus a marker at each failed
request's exact time, with its details on hover). Cutover events are vertical lines with labels; the
"during" window is shaded. Below: latency percentiles before/during/after, upstreams with first and
last answer, and a table of every failed request. The DOM size is bounded whatever the run's length:
each lane is one ``<path>`` per upstream over at most ~1,200 buckets, markers and rows are capped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from runbook.evidence.redact import redact
from runbook.evidence.timeline import Buckets, PhaseStats, ProbeSummary

W, LEFT, RIGHT = 1100, 64, 18
PW = W - LEFT - RIGHT
LANE_A, LANE_B, LANE_C, GAP, AXIS, ROW = 96, 120, 30, 16, 26, 14
FAIL = "#cf222e"
NONE = "#8c959f"
DASH, MINUS = "\u2013", "\u2212"
_NAMED = {"green": "#2da44e", "blue": "#0969da"}
_PALETTE = ("#8250df", "#bf8700", "#1b7c83", "#e16f24", "#57606a", "#bc4c00")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return DASH
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def fmt_t(t: float, span: float = 0.0, *, precise: bool = False) -> str:
    """Seconds since the probe started: 12.3 s (12.345 s when precise or short), or h:mm:ss.s for long runs."""
    if span < 120 and abs(t) < 120:
        return f"{t:.3f} s" if span < 10 or precise else f"{t:.1f} s"
    sign, t = ("-" if t < 0 else ""), abs(t)
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    sec = f"{s:06.3f}" if precise else f"{s:04.1f}"
    return f"{sign}{int(h)}:{int(m):02d}:{sec}" if h else f"{sign}{int(m)}:{sec}"


def colours(summary: ProbeSummary, names: Mapping[str, str]) -> dict[str | None, str]:
    out: dict[str | None, str] = {}
    spare = iter(_PALETTE * 4)
    for u in summary.upstreams:
        if u.upstream is None:
            out[None] = NONE
            continue
        label = names.get(u.upstream, "").lower()
        out[u.upstream] = next((c for k, c in _NAMED.items() if k in label), None) or next(spare)
    return out


def _label(upstream: str | None, names: Mapping[str, str]) -> str:
    if upstream is None:
        return "no upstream"
    return f"{names[upstream]} ({upstream})" if upstream in names else upstream


def _nice_step(span: float, target: int = 9) -> float:
    raw = span / target if span > 0 else 1.0
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)
    mag = 10 ** math.floor(math.log10(raw))
    if raw < 1:
        return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return float(next((s for s in steps if s >= raw), math.ceil(raw / 3600) * 3600))


def coarsen(b: Buckets, min_mean: float = 40.0, min_buckets: int = 60) -> Buckets:
    """Group k adjacent buckets so that a bucket holds ~``min_mean`` requests on average (a rate drawn from
    3 or 4 requests per bucket is a comb, not a signal); never fewer than ``min_buckets``. Counts add up,
    latency keeps the maximum, so a spike still shows."""
    total = sum(sum(c) for c in b.counts.values())
    if not b.n or not total:
        return b
    k = max(1, min(math.ceil(min_mean / (total / b.n)), b.n // min_buckets or 1))
    if k == 1:
        return b
    n = math.ceil(b.n / k)

    def group(values: list[Any], fn: Any) -> list[Any]:
        return [fn(values[i * k:(i + 1) * k]) for i in range(n)]

    return Buckets(origin=b.origin, width=b.width * k, n=n,
                   counts={u: group(c, sum) for u, c in b.counts.items()},
                   max_latency={u: group(m, max) for u, m in b.max_latency.items()},
                   failures=group(b.failures, sum))


class _Scale:
    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1 if t1 > t0 else t0 + 1.0

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * PW


def _stacked(b: Buckets, order: Sequence[str | None], sc: _Scale, top: float, cols: Mapping[str | None, str],
             end: float) -> str:
    n = b.n
    # the last bucket ends with the data, not a full width later: its rate is not a false dip
    edges = [min(b.origin + i * b.width, max(end, b.origin + (n - 1) * b.width + 1e-6)) for i in range(n + 1)]
    widths = [max(edges[i + 1] - edges[i], 1e-6) for i in range(n)]
    totals = [sum(b.counts[u][i] for u in order) / widths[i] for i in range(n)]
    peak = max(totals, default=0.0) or 1.0
    scale = (LANE_A - 6) / peak
    base = top + LANE_A
    xs = [round(sc.x(t), 1) for t in edges]
    below = [0.0] * n
    out = [f'<text x="{LEFT - 6}" y="{top + 9}" text-anchor="end" font-size="10" fill="#57606a">'
           f'{peak:.0f}/s</text>',
           f'<text x="{LEFT - 6}" y="{base}" text-anchor="end" font-size="10" fill="#57606a">0</text>']
    for u in order:
        c = b.counts[u]
        above = [below[i] + c[i] / widths[i] for i in range(n)]
        d = [f"M{xs[0]},{round(base - below[0] * scale, 1)}"]
        d += [f"V{round(base - above[i] * scale, 1)}H{xs[i + 1]}" for i in range(n)]
        d += [f"V{round(base - below[i] * scale, 1)}H{xs[i]}" for i in reversed(range(n))]
        out.append(f'<path d="{"".join(d)}Z" fill="{cols[u]}" fill-opacity="0.8" stroke="none"/>')
        below = above
    return "".join(out)


def _latency(b: Buckets, order: Sequence[str | None], sc: _Scale, top: float, cols: Mapping[str | None, str],
             p99: float | None) -> str:
    values = [v for u in order for v in b.max_latency[u] if v > 0]
    if not values:
        return f'<text x="{LEFT + 8}" y="{top + LANE_B / 2}" font-size="11" fill="#57606a">no latency recorded</text>'
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values) * 1.0001))
    span = math.log10(hi) - math.log10(lo) or 1.0
    bottom = top + LANE_B

    def y(v: float) -> float:
        return round(bottom - (math.log10(max(v, lo)) - math.log10(lo)) / span * (LANE_B - 4), 1)

    out = []
    decade = lo
    while decade <= hi * 1.0001:
        yy = y(decade)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + PW}" y1="{yy}" y2="{yy}" stroke="#eaeef2"/>'
                   f'<text x="{LEFT - 6}" y="{yy + 3}" text-anchor="end" font-size="10" fill="#57606a">'
                   f'{_e(fmt_ms(decade))}</text>')
        decade *= 10
    for u in order:
        m, c = b.max_latency[u], b.counts[u]
        d, prev = [], False
        for i in range(b.n):
            if c[i] and m[i] > 0:
                d.append(f"{'L' if prev else 'M'}{round(sc.x(b.origin + (i + 0.5) * b.width), 1)},{y(m[i])}")
                prev = True
            else:
                prev = False
        if d:
            out.append(f'<path d="{"".join(d)}" fill="none" stroke="{cols[u]}" stroke-width="1.3"/>')
    if p99 is not None:
        yy = y(p99)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + PW}" y1="{yy}" y2="{yy}" stroke="#57606a" stroke-dasharray="2 3"/>'
                   f'<text x="{LEFT + PW - 2}" y="{yy - 3}" text-anchor="end" font-size="10" fill="#57606a">'
                   f'overall p99 {_e(fmt_ms(p99))}</text>')
    return "".join(out)


def _failures(s: ProbeSummary, sc: _Scale, top: float, max_markers: int) -> str:
    b = s.buckets
    if not s.failures_total:
        return (f'<text x="{LEFT + 8}" y="{top + LANE_C / 2 + 4}" font-size="11" fill="#1a7f37">'
                f'no failed request</text>')
    peak = max(b.failures, default=0) or 1
    base = top + LANE_C
    d = "".join(
        f"M{round(sc.x(b.origin + i * b.width), 1)},{base}v{-round(max(2.0, c / peak * (LANE_C - 4)), 1)}"
        f"h{max(1.0, round(b.width / (sc.t1 - sc.t0) * PW, 1))}V{base}Z"
        for i, c in enumerate(b.failures) if c)
    out = [f'<path d="{d}" fill="{FAIL}" fill-opacity="0.3"/>']
    for f in s.failures[:max_markers]:
        tip = (f"#{f.seq} at {fmt_t(f.t, s.duration, precise=True)}: {f.kind} {f.verdict} {f.error} "
               f"(upstream {f.upstream or '-'})")
        out.append(f'<circle cx="{round(sc.x(f.t), 1)}" cy="{top + LANE_C / 2}" r="3.5" fill="{FAIL}" '
                   f'stroke="#fff" stroke-width="0.8"><title>{_e(redact(tip))}</title></circle>')
    return "".join(out)


def _event_rows(s: ProbeSummary, sc: _Scale) -> list[int]:
    """A label row per event so that labels do not overlap (at most 4 rows; beyond, they share the last)."""
    ends: list[float] = []
    rows = []
    for e in s.events:
        x = sc.x(e.t)
        width = _label_width(e.name)
        start, end = (x - width, x) if x + width > W else (x, x + width)
        row = next((i for i, last in enumerate(ends) if last + 6 < start), None)
        if row is None:
            if len(ends) < 4:
                ends.append(0.0)
            row = len(ends) - 1
        ends[row] = end
        rows.append(row)
    return rows


def _label_width(name: str) -> float:
    return 6.2 * len(name) + 4


def _events(s: ProbeSummary, sc: _Scale, rows: list[int], top: float, bottom: float) -> str:
    out = []
    for e, row in zip(s.events, rows, strict=True):
        x = round(sc.x(e.t), 1)
        colour = "#9a6700" if e.cutover else "#6e7781"
        tip = _e(redact(f"{e.name} at {fmt_t(e.t, s.duration, precise=True)}" + (f": {e.detail}" if e.detail else "")))
        dash = "" if e.cutover else ' stroke-dasharray="3 3"'
        right = x + _label_width(e.name) > W
        anchor = f'x="{x - 2}" text-anchor="end"' if right else f'x="{x + 2}"'
        out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" stroke="{colour}" stroke-width="1.2"{dash}>'
                   f'<title>{tip}</title></line>'
                   f'<text {anchor} y="{4 + ROW * (row + 1) - 3}" font-size="11" fill="{colour}" '
                   f'font-weight="{600 if e.cutover else 400}">{_e(e.name)}<title>{tip}</title></text>')
    return "".join(out)


def _svg(s: ProbeSummary, names: Mapping[str, str], max_markers: int) -> str:
    b = s.buckets
    cols = colours(s, names)
    order: list[str | None] = [u.upstream for u in s.upstreams if u.upstream is not None and u.upstream in b.counts]
    if None in b.counts:
        order.append(None)
    sc = _Scale(min(b.origin, s.start), s.end)
    rows = _event_rows(s, sc)
    band = 10 + ROW * (max(rows, default=0) + 1)
    a_top = band
    b_top = a_top + LANE_A + GAP
    c_top = b_top + LANE_B + GAP
    axis_top = c_top + LANE_C
    height = axis_top + AXIS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" '
             f'font-family="Helvetica, Arial, sans-serif" role="img" aria-label="cutover timeline">',
             f'<rect x="0" y="0" width="{W}" height="{height}" fill="#fff"/>']
    if s.cutover:
        x0, x1 = sc.x(s.cutover[0]), sc.x(s.cutover[1])
        parts.append(f'<rect x="{round(x0, 1)}" y="{a_top}" width="{round(max(1.5, x1 - x0), 1)}" '
                     f'height="{axis_top - a_top}" fill="#fff1b8" fill-opacity="0.7"/>')
    for top, h, name in ((a_top, LANE_A, "requests/s by serving upstream"),
                         (b_top, LANE_B, "max latency per bucket (log)"), (c_top, LANE_C, "failed requests")):
        parts.append(f'<rect x="{LEFT}" y="{top}" width="{PW}" height="{h}" fill="none" stroke="#d0d7de"/>'
                     f'<text x="{LEFT + 4}" y="{top - 3}" font-size="10" fill="#57606a">{name}</text>')
    if b.n:
        shown = coarsen(b)
        parts.append(_stacked(shown, order, sc, a_top, cols, s.end))
        parts.append(_latency(shown, order, sc, b_top, cols, s.overall.p99))
    parts.append(_failures(s, sc, c_top, max_markers))
    step = _nice_step(sc.t1 - sc.t0)
    tick = math.ceil(sc.t0 / step) * step
    while tick <= sc.t1 + 1e-9:
        x = round(sc.x(tick), 1)
        parts.append(f'<line x1="{x}" x2="{x}" y1="{axis_top}" y2="{axis_top + 4}" stroke="#57606a"/>'
                     f'<text x="{x}" y="{axis_top + 16}" text-anchor="middle" font-size="10" fill="#57606a">'
                     f'{_e(fmt_t(tick, sc.t1 - sc.t0))}</text>')
        tick += step
    parts.append(_events(s, sc, rows, a_top - 4, axis_top))
    parts.append("</svg>")
    return "".join(parts)


def _phase_row(p: PhaseStats, span: float) -> str:
    when = f"{fmt_t(p.start, span)} {DASH} {fmt_t(p.end, span)}" if p.start is not None and p.end is not None else DASH
    fail_cls = ' class="rb-bad"' if p.failures else ""
    return (f"<tr><th>{_e(p.name)}</th><td>{_e(when)}</td><td>{p.requests:,}</td><td{fail_cls}>{p.failures:,}</td>"
            + "".join(f"<td>{_e(fmt_ms(v))}</td>" for v in (p.p50, p.p90, p.p99, p.p999, p.max, p.lag_p99))
            + "</tr>")


def render_timeline(s: ProbeSummary, *, title: str = "Zero-drop probe", upstream_names: Mapping[str, str] | None = None,
                    max_markers: int = 500, max_rows: int = 500, records_href: str | None = None,
                    links: Sequence[tuple[str, str]] = ()) -> str:
    """The timeline of one prober directory as an HTML fragment (inline SVG and tables).

    ``links`` are (label, href) pairs shown in the header: the records and the standalone page."""
    names = dict(upstream_names or {})
    cols = colours(s, names)
    span = s.duration
    rate = s.requests / span if span else 0.0
    share = "".join(
        f'<span class="rb-tl-key"><i style="background:{cols.get(u.upstream, NONE)}"></i>'
        f"{_e(_label(u.upstream, names))}: {u.requests:,}</span>" for u in s.upstreams)
    head = (f'<div class="rb-tl-head"><b>{_e(title)}</b> — {s.requests:,} requests over {_e(fmt_t(span, span))}'
            f" ({rate:,.0f}/s); "
            + (f'<span class="rb-bad">{s.failures_total:,} failed</span>' if s.failures_total
               else '<span class="rb-good">0 failed</span>')
            + (f"; cutover {_e(fmt_t(s.cutover[0], span))} {DASH} {_e(fmt_t(s.cutover[1], span))}" if s.cutover
               else "; no cutover event")
            + f'<div class="rb-tl-legend">{share}'
            f'<span class="rb-tl-key"><i style="background:{FAIL}; border-radius:50%"></i>failed request</span>'
            f'<span class="rb-tl-key"><i style="background:#fff1b8"></i>during cutover</span>'
            f"<span class=\"rb-tl-key\">bucket {_e(fmt_ms(coarsen(s.buckets).width * 1000))} "
            f"(failures at their exact time)</span></div>"
            + ('<div class="rb-small">records: ' + " \u00b7 ".join(f'<a href="{_e(h)}">{_e(n)}</a>' for n, h in links)
               + "</div>" if links else "")
            + "</div>")
    phases = "".join(_phase_row(p, span) for p in (*s.phases, s.overall))
    ptable = ('<table class="rb-table rb-tl-phases"><tr><th>phase</th><th>time</th><th>requests</th><th>failed</th>'
              "<th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>send lag p99</th></tr>"
              f"{phases}</table>")
    ups = "".join(
        f'<tr><th><i class="rb-sw" style="background:{cols.get(u.upstream, NONE)}"></i>'
        f"{_e(_label(u.upstream, names))}</th><td>{u.requests:,}</td><td>{u.ok:,}</td>"
        f"<td>{_e(fmt_t(u.first, span))}</td><td>{_e(fmt_t(u.last, span))}</td></tr>" for u in s.upstreams)
    utable = ('<table class="rb-table"><tr><th>upstream</th><th>requests</th><th>answered ok</th>'
              f"<th>first</th><th>last</th></tr>{ups}</table>")
    verdicts = ", ".join(f"{_e(k)} {v:,}" for k, v in s.verdicts.items())
    parts = [f'<div class="rb-timeline">{head}<div class="rb-tl-chart">{_svg(s, names, max_markers)}</div>',
             f'<div class="rb-tl-tables">{ptable}{utable}</div>',
             f'<p class="rb-small">Latency is done {MINUS} sent of answered requests; '
             f"send lag is sent {MINUS} scheduled (an open-loop prober that falls behind shows it here). "
             f"Verdicts: {verdicts}.</p>"]
    if s.malformed:
        examples = "<br>".join(_e(redact(x)) for x in s.malformed_examples)
        parts.append(f'<p class="rb-warn">{s.malformed} record line(s) could not be read '
                     f"(a prober stopped mid-line writes one): {examples}</p>")
    parts.append(_failure_table(s, names, max_rows, records_href))
    parts.append("</div>")
    return "".join(parts)


def _failure_table(s: ProbeSummary, names: Mapping[str, str], max_rows: int, records_href: str | None) -> str:
    if not s.failures_total:
        return '<p class="rb-good">Every request was answered ok.</p>'
    span = s.duration
    rows = "".join(
        f"<tr><td>{f.seq if f.seq is not None else DASH}</td><td>{_e(fmt_t(f.t, span, precise=True))}</td>"
        f"<td>{_e(f.kind)}</td>"
        f'<td class="rb-bad">{_e(f.verdict)}</td><td>{f.status if f.status is not None else DASH}</td>'
        f"<td>{_e(_label(f.upstream, names) if f.upstream else DASH)}</td><td>{_e(fmt_ms(f.latency_ms))}</td>"
        f"<td>{_e(redact(f.error))}</td></tr>"
        for f in s.failures[:max_rows])
    shown = min(len(s.failures), max_rows)
    more = ""
    if shown < s.failures_total:
        where = f' (<a href="{_e(records_href)}">requests.jsonl</a>, lines with "ok": false)' if records_href else ""
        more = (f'<p class="rb-warn">Showing {shown:,} of {s.failures_total:,} failed requests; '
                f"all are in the records{where}.</p>")
    return (f'<details class="rb-fold" open><summary>{s.failures_total:,} failed request(s)</summary>'
            '<table class="rb-table rb-tl-fails"><tr><th>seq</th><th>time</th><th>kind</th><th>verdict</th>'
            f"<th>status</th><th>upstream</th><th>latency</th><th>error</th></tr>{rows}</table>{more}</details>")


def timeline_page(s: ProbeSummary, *, title: str = "Zero-drop probe", upstream_names: Mapping[str, str] | None = None,
                  records_href: str | None = None, links: Sequence[tuple[str, str]] = ()) -> str:
    """A standalone HTML page of the timeline (kept in the bundle next to the records)."""
    from runbook.evidence.style import CSS

    body = render_timeline(s, title=title, upstream_names=upstream_names, records_href=records_href, links=links)
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{CSS}</style>'
            f"</head><body>{body}</body></html>")
