"""Canary promotion gated on Prometheus metrics (seed 004, issue 14).

- :mod:`runbook.canary.gates`: pure gates (error rate by a Wilson bound, p95 against a baseline, a metric's
  presence) and the moving-window evaluator; each returns a frozen result with its verdict, figures, bounds
  and a reason that carries the figures.
- :mod:`runbook.canary.promql`: the PromQL the gates need for the proxy's metrics, and a parser of
  Prometheus's HTTP API answers into plain values.
"""
