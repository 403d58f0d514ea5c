"""Durable prediction log: append-only JSON-lines files, rotated by size or age, flushed on shutdown.

The request path only appends to an in-memory buffer; a background thread writes the buffer out
every `flush_seconds` (write, flush, fsync). Records that fail to write stay in the buffer and are
retried. `close()` writes whatever is left; a record appended after `close()` is written at once.
Files are named `predictions-<UTC start>-<pid>-<seq>.jsonl`, so several processes can share a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

FILE_GLOB = "predictions-*.jsonl"


class PredictionLog:
    """Buffered, rotating writer of prediction records.

    Args:
        directory: Folder of the log files (created if missing).
        max_bytes: Rotate once the current file is larger than this.
        max_age_seconds: Rotate once the current file is older than this.
        flush_seconds: Longest time a record stays only in memory.
        on_written: Called with the number of records made durable.
        on_error: Called with the exception when a write fails.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_age_seconds: float = 3600.0,
        flush_seconds: float = 0.2,
        on_written: Callable[[int], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.flush_seconds = flush_seconds
        self._on_written = on_written or (lambda n: None)
        self._on_error = on_error or (lambda e: None)
        self._buffer: list[str] = []
        self._lock = threading.Lock()  # guards _buffer
        self._io_lock = threading.Lock()  # guards the file
        self._file: IO[str] | None = None
        self._file_opened = 0.0
        self._seq = 0
        self._closed = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PredictionLog:
        """Create the folder and start the background writer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        return self

    def append(self, records: list[dict[str, Any]]) -> None:
        """Queue records (cheap, never blocks on I/O unless the log is already closed)."""
        lines = [json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records]
        with self._lock:
            self._buffer.extend(lines)
            closed = self._closed
        if closed:
            self.flush()

    def flush(self) -> int:
        """Write buffered records now; returns how many were made durable."""
        with self._io_lock:
            with self._lock:
                lines, self._buffer = self._buffer, []
            if not lines:
                return 0
            try:
                f = self._current_file()
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            except Exception as exc:  # disk full, folder gone: keep the records and retry later
                with self._lock:
                    self._buffer[:0] = lines
                self._reset_file()
                self._on_error(exc)
                return 0
            self._on_written(len(lines))
            if f.tell() >= self.max_bytes or time.monotonic() - self._file_opened >= self.max_age_seconds:
                self._reset_file()
            return len(lines)

    def close(self) -> None:
        """Stop the writer and write everything still buffered (idempotent)."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.flush()
        with self._io_lock:
            self._reset_file()

    @property
    def pending(self) -> int:
        """Records not yet durable."""
        with self._lock:
            return len(self._buffer)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            with self._lock:
                closed = self._closed
            self.flush()
            if closed:
                return

    def _current_file(self) -> IO[str]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self._seq += 1
            path = self.directory / f"predictions-{stamp}-{os.getpid()}-{self._seq:04d}.jsonl"
            self._file = path.open("a", encoding="utf-8")
            self._file_opened = time.monotonic()
        return self._file

    def _reset_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_records(directory: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in a log folder, oldest file first (a torn last line is skipped)."""
    for path in sorted(directory.glob(FILE_GLOB)):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    yield json.loads(line)
