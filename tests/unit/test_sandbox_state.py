"""The sandbox's state file is read by another process (the ingress loop) while `up` still launches components:
a reader must never see it half written (CI once saw it empty, and every cluster test errored)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from scripts.kube.sandbox import ControlPlane


def test_state_file_is_never_seen_half_written(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path, ports={f"component-{i}": 40000 + i for i in range(200)})
    plane._save_state()
    done = threading.Event()

    def rewrite() -> None:
        for _ in range(3000):
            plane._save_state()
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not done.is_set():
        state = json.loads((tmp_path / "state.json").read_text())
        assert state["ports"]["component-199"] == 40199
        reads += 1
    writer.join()
    assert reads > 0
    assert not (tmp_path / "state.json.partial").exists()
