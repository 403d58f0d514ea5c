"""Each platform process keeps its own metric values, even after feast switched on multiprocess mode."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import os

    import feast.metrics  # sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported
    from prometheus_client import CollectorRegistry, Counter

    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR"), "feast no longer turns on multiprocess mode"
    {pin}

    def fresh_count():
        registry = CollectorRegistry()
        counter = Counter("fallbacks", "help", ["reason"], registry=registry)
        counter.labels("non_finite").inc(4)
        return registry.get_sample_value("fallbacks_total", {{"reason": "non_finite"}})

    print(fresh_count(), fresh_count())
    """
)


def _counts(pin: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROGRAM.format(pin=pin)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_init_process_keeps_values_per_registry_after_feast_turned_on_multiprocess_mode() -> None:
    assert _counts("from mlplatform.processes import init_process; init_process()") == "4.0 4.0"


def test_importing_the_platform_changes_nothing_until_an_entry_point_calls_init_process() -> None:
    """No import-time side effects: importing the CLI and the servers leaves prometheus_client as it was."""
    assert _counts("import mlplatform.cli.main, mlplatform.monitoring.exporter, serving.transformer") == "4.0 8.0"


def test_without_the_pin_the_second_registry_inherits_the_first_value() -> None:
    """The failure the pin prevents (a counter starting at an earlier one's value): if feast or
    prometheus_client stop doing this, init_process in mlplatform/processes.py can go."""
    assert _counts("") == "4.0 8.0"
