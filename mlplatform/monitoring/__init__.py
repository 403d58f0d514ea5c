"""Monitoring: drift math, references, the prediction log, the monitor process, reports and dashboards."""
