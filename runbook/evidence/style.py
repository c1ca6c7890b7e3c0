"""The evidence's stylesheet, inlined into the report (once, with the summary) and into standalone pages."""

from __future__ import annotations

CSS = """
.rb-ev, .rb-summary, .rb-timeline { color: #1f2328; font: 13px/1.45 -apple-system, "Segoe UI", Helvetica, Arial,
  sans-serif; }
.rb-ev { padding: 6px 4px 10px; }
.rb-ev pre, .rb-summary pre, .rb-timeline pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 4px;
  padding: 6px 8px; margin: 4px 0; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  white-space: pre-wrap; word-break: break-word; max-height: 420px; overflow: auto; color: #1f2328; }
.rb-head { font-size: 14px; margin: 0 0 6px; }
.rb-head .rb-feature { color: #57606a; }
.rb-tag { display: inline-block; background: #ddf4ff; color: #0550ae; border-radius: 10px; padding: 0 7px;
  margin-left: 4px; font-size: 11px; }
.rb-reason { margin: 4px 0 8px; padding: 6px 10px; border-radius: 4px; background: #fff8c5; color: #633c01; }
.rb-reason.failed { background: #ffebe9; color: #82071e; }
ol.rb-steps { list-style: none; margin: 0; padding: 0; }
li.rb-step { margin: 5px 0; padding: 5px 10px 6px; border-left: 4px solid #8c959f; background: #f6f8fa;
  border-radius: 0 4px 4px 0; }
li.rb-step.passed { border-color: #1a7f37; }
li.rb-step.failed { border-color: #cf222e; background: #fff5f5; }
li.rb-step.skipped { border-color: #d4a72c; background: #fffdf0; color: #57606a; }
.rb-line { display: flex; gap: 8px; align-items: baseline; }
.rb-mark { font-weight: 700; width: 14px; flex: none; }
.passed > .rb-line .rb-mark { color: #1a7f37; }
.failed > .rb-line .rb-mark { color: #cf222e; }
.skipped > .rb-line .rb-mark { color: #9a6700; }
.rb-kw { font-weight: 700; color: #0550ae; }
.rb-text { flex: 1; font-weight: 500; }
.rb-took { color: #57606a; font-size: 11px; white-space: nowrap; }
.rb-error { color: #82071e; background: #ffebe9 !important; border-color: #ffcecb !important; }
.rb-entries { margin: 4px 0 0 22px; }
.rb-entry { margin: 3px 0; }
.rb-entry-kind { display: inline-block; min-width: 64px; font-size: 11px; color: #57606a; text-transform: uppercase;
  letter-spacing: .03em; }
details.rb-fold > summary { cursor: pointer; }
details.rb-fold > summary:hover { color: #0969da; }
.rb-dim { color: #57606a; font-size: 11px; }
table.rb-cmp, table.rb-table, table.rb-kv { border-collapse: collapse; margin: 4px 0; }
table.rb-cmp th, table.rb-cmp td, table.rb-table th, table.rb-table td, table.rb-kv th, table.rb-kv td {
  border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
table.rb-cmp th, table.rb-table th, table.rb-kv th { background: #f6f8fa; font-weight: 600; }
table.rb-cmp { width: 100%; table-layout: fixed; }
table.rb-cmp td pre { margin: 0; max-height: 220px; }
table.rb-cmp col.rb-c-title { width: 30%; } table.rb-cmp col.rb-c-ok { width: 34px; }
table.rb-cmp tr.bad td { background: #fff5f5; }
table.rb-cmp td.rb-ok { text-align: center; font-weight: 700; }
.rb-bad { color: #cf222e; font-weight: 600; }
.rb-good { color: #1a7f37; font-weight: 600; }
.rb-skip { color: #9a6700; font-weight: 600; }
.rb-warn { color: #9a6700; }
.rb-small { color: #57606a; font-size: 11px; }
.rb-diag { margin: 6px 0 2px; border: 1px solid #ff8182; border-radius: 4px; background: #fff; padding: 4px 8px; }
.rb-diag > summary { font-weight: 600; color: #82071e; }
.rb-diag h5 { margin: 6px 0 2px; font-size: 12px; }
.rb-diag pre { max-height: 260px; }
.rb-summary { border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 14px; margin: 6px 0 12px;
  background: #fff; max-width: 1100px; }
.rb-summary h3 { margin: 10px 0 4px; font-size: 14px; }
.rb-counts { font-size: 16px; margin-bottom: 8px; }
.rb-pill { display: inline-block; border-radius: 12px; padding: 1px 10px; margin-right: 6px; font-weight: 600; }
.rb-pill.passed { background: #dafbe1; color: #116329; }
.rb-pill.failed { background: #ffebe9; color: #a40e26; }
.rb-pill.skipped { background: #fff8c5; color: #7d4e00; }
.rb-pill.error { background: #ffebe9; color: #a40e26; }
.rb-summary ul { margin: 2px 0 4px; padding-left: 20px; }
.rb-summary li { margin: 2px 0; }
.rb-digest { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 11px; }
.rb-timeline { margin: 6px 0; padding: 8px; border: 1px solid #d0d7de; border-radius: 6px; background: #fff; }
.rb-tl-head { margin-bottom: 4px; }
.rb-tl-legend { margin-top: 4px; }
.rb-tl-key { display: inline-block; margin-right: 14px; font-size: 12px; color: #57606a; }
.rb-tl-key i, i.rb-sw { display: inline-block; width: 11px; height: 11px; vertical-align: -1px; margin-right: 4px;
  border-radius: 2px; }
.rb-tl-chart { overflow-x: auto; }
.rb-tl-tables { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
table.rb-tl-fails td:last-child { max-width: 520px; word-break: break-word; }
"""
