"""mlplatform: from raw card transactions to a monitored, canaried fraud-detection endpoint.

Every process of the platform keeps its own Prometheus metrics (one server, monitor, webhook or rollout
controller per process), so none uses prometheus_client's multiprocess mode. Importing feast turns that mode
on for the importing process (feast.metrics points PROMETHEUS_MULTIPROC_DIR at a temporary folder when it is
unset), and in it same-named series of one process share one value across registries and live in files under
/tmp: a new server's counter would start where an earlier one in the process stopped. The value class is
pinned here, in the package every platform module and server imports, whatever was imported first.
"""

from prometheus_client import values as _prometheus_values

_prometheus_values.ValueClass = _prometheus_values.MutexValue
