"""Canary rollouts: settings, evidence sources, PromQL, pure analysis, the controller, reports and backends."""
