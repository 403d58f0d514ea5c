"""mlplatform: from raw card transactions to a monitored, canaried fraud-detection endpoint.

Importing it does nothing: each process entry point calls `mlplatform.processes.init_process()`.
"""
