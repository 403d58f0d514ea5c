"""Localhost stand-ins for a cluster: serving processes, traffic splitter, Prometheus, traffic generator."""
