"""What every platform process does first: each entry point calls `init_process()` before it builds metrics.

Every process of the platform keeps its own Prometheus metrics (one model server, monitor, webhook, splitter or
rollout controller per process), so none uses prometheus_client's multiprocess mode. Importing feast turns that
mode on for the importing process (feast.metrics points PROMETHEUS_MULTIPROC_DIR at a temporary folder when it is
unset); in it, same-named series of one process share one value across registries and live in files under /tmp,
so a new server's counter would start where an earlier one in the process stopped. `init_process` pins the
in-process value class, whatever was imported first. It is an explicit call, not an import side effect:
docs/adr/0014-process-entry-points.md.
"""

from __future__ import annotations

from prometheus_client import values


def init_process() -> None:
    """Keep this process's metric values in memory, per registry (call before any metric is created)."""
    values.ValueClass = values.MutexValue
