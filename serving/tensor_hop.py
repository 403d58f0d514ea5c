"""The collocated transformer-to-predictor hop: model-input rows as float32 tensors over a Unix socket.

Collocated (ADR 0016) the transformer and the predictor are two containers of one pod. Over HTTP every request
paid the predictor's whole web stack (uvicorn, the ASGI middleware chain, KServe's model call: about 0.5 ms of
CPU on these cores for a model call of 0.07 ms) and the transformer's HTTP client. This hop carries the same
call as length-prefixed binary frames on a keep-alive Unix socket in a volume the two containers share (on a
cluster an emptyDir, locally a private temporary folder): no port, nothing outside the pod can reach it.
The predictor's v1/v2 routes (HTTP and gRPC) stay for every other client and for the separate-pod layout.

Frames, little-endian:

* hello, predictor -> transformer on connect: `MLH1`, u32 length, then JSON
  `{"model_version", "role", "threshold", "n_features"}` (fixed for a predictor process).
* request: `MLQ1`, u32 request id, u32 rows, u32 columns, then rows x columns float32, row-major.
* answer: u32 request id, u8 status (0 ok, 1 invalid input, 2 server error), u32 n, then for ok n float64 scores
  and n bytes of fallback flags (0/1); otherwise an n-byte UTF-8 message.

The predictor answers each connection's requests in order, one at a time (scoring is synchronous in its event
loop, as over HTTP); the transformer matches answers by request id, so a request that missed its deadline is
dropped and its late answer ignored. A frame the predictor cannot read (unknown magic, implausible size) closes
the connection; the transformer reconnects on its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput

HELLO = b"MLH1"
REQUEST = b"MLQ1"
_HELLO_HEAD = struct.Struct("<4sI")
_REQUEST_HEAD = struct.Struct("<4sIII")
_ANSWER_HEAD = struct.Struct("<IBI")
OK, INVALID, ERROR = 0, 1, 2
#: Largest plausible request: columns per row (a frame claiming more is not ours and closes the connection).
MAX_COLUMNS = 4096
#: Unix socket paths are limited by sockaddr_un (108 bytes including the terminating NUL); the server binds a name
#: 4 bytes longer first.
MAX_PATH_BYTES = 103


class HopError(ConnectionError):
    """The predictor could not be reached over the hop, or the connection broke."""


@dataclass(frozen=True)
class Answer:
    """One answer of the predictor: status, and scores and fallback flags (ok) or a message (otherwise)."""

    status: int
    scores: np.ndarray | None = None
    fallback: np.ndarray | None = None
    message: str = ""


def check_path(path: Path) -> Path:
    """`path` if it can name the hop's Unix socket (at most 103 bytes), else ValueError naming the limit."""
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ValueError(f"a Unix socket path must be at most {MAX_PATH_BYTES} bytes, got {len(os.fsencode(path))}")
    return path


# ------------------------------------------------------------------------------------------------ predictor side
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class TensorServer:
    """The predictor's end: listens on `path` and answers each request frame with `score(rows)`.

    Args:
        path: Socket path (an existing socket file there is replaced: the previous process's).
        score: Validated scoring of float32 rows -> (float64 scores, bool fallback flags), counting the request in
            the predictor's metrics; raises `kserve.errors.InvalidInput` for rows it refuses (answered INVALID with
            the message) and anything else for a failure (answered ERROR).
        hello: What the transformer learns on connect (model_version, role, threshold, n_features).
        max_rows: Rows one request may carry (the predictor's max_batch_size); more closes the connection.
    """

    def __init__(self, path: Path, score: Scorer, hello: dict[str, Any], max_rows: int) -> None:
        self.path = check_path(path)
        self.score = score
        self.max_rows = max_rows
        body = orjson.dumps(hello)
        self._hello = _HELLO_HEAD.pack(HELLO, len(body)) + body
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    def stop(self) -> None:
        """Stop listening (callable from a signal handler of the serving thread, before or after `run` starts)."""
        self._stopping = True
        if self._stopped is not None:
            self._stopped.set()

    async def run(self) -> None:
        """Listen until `stop`; the socket file is owner-only and removed at the end."""
        self._stopped = asyncio.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        binding = self.path.with_name(f"{self.path.name}.new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(binding)
        server = await asyncio.start_unix_server(self._serve, path=str(binding))
        os.chmod(binding, 0o600)
        os.replace(binding, self.path)  # appears listening and owner-only; replaces a dead process's socket
        try:
            if not self._stopping:
                await self._stopped.wait()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            for connection in list(self._connections):  # the transformer sees the connection end and reconnects
                connection.cancel()
            if self._connections:
                await asyncio.wait(self._connections, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        self._connections.add(this)
        writer.write(self._hello)
        try:
            while True:
                magic, request_id, rows, columns = _REQUEST_HEAD.unpack(await reader.readexactly(_REQUEST_HEAD.size))
                if magic != REQUEST or rows > self.max_rows or columns > MAX_COLUMNS:
                    return  # not a frame of ours: nothing after it can be trusted
                data = await reader.readexactly(4 * rows * columns)
                writer.write(self._answer(request_id, np.frombuffer(data, np.float32).reshape(rows, columns).copy()))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            self._connections.discard(this)

    def _answer(self, request_id: int, rows: np.ndarray) -> bytes:
        try:
            scores, fallback = self.score(rows)
        except InvalidInput as exc:
            return _message(request_id, INVALID, str(exc))
        except Exception as exc:  # a failing model answers an error, as the HTTP route's 500 does
            return _message(request_id, ERROR, f"{type(exc).__name__}: {exc}")
        n = len(scores)
        head = _ANSWER_HEAD.pack(request_id, OK, n)
        return head + np.asarray(scores, "<f8").tobytes() + np.asarray(fallback, np.uint8).tobytes()


def _message(request_id: int, status: int, text: str) -> bytes:
    body = text.encode()[:4096]
    return _ANSWER_HEAD.pack(request_id, status, len(body)) + body


# ---------------------------------------------------------------------------------------------- transformer side
class TensorClient:
    """The transformer's end: one keep-alive connection, requests pipelined and matched by id.

    Args:
        path: The predictor's socket.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hello: dict[str, Any] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()

    async def score(self, rows: np.ndarray, timeout: float) -> Answer:
        """The predictor's answer for float rows (sent as float32) within `timeout` seconds.

        Raises:
            TimeoutError: No answer within the deadline (the request is dropped; its late answer is ignored).
            HopError: The socket cannot be reached or the connection broke.
        """
        async with asyncio.timeout(timeout):
            writer = await self._connect()
            request_id = next(self._ids) & 0xFFFFFFFF
            answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = answer
            try:
                data = np.ascontiguousarray(rows, "<f4")
                writer.write(_REQUEST_HEAD.pack(REQUEST, request_id, data.shape[0], data.shape[1]) + data.tobytes())
                return await answer
            finally:
                self._pending.pop(request_id, None)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
                magic, length = _HELLO_HEAD.unpack(await reader.readexactly(_HELLO_HEAD.size))
                if magic != HELLO:
                    writer.close()
                    raise HopError(f"{self.path} is not a predictor's tensor socket")
                self.hello = orjson.loads(await reader.readexactly(length))
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise HopError(f"{type(exc).__name__}: {exc}") from None
            self._writer = writer
            self._reading = asyncio.create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_id, status, n = _ANSWER_HEAD.unpack(await reader.readexactly(_ANSWER_HEAD.size))
                if status == OK:
                    data = await reader.readexactly(9 * n)
                    answer = Answer(
                        OK, np.frombuffer(data, "<f8", n), np.frombuffer(data, np.uint8, n, 8 * n).astype(bool)
                    )
                else:
                    answer = Answer(status, message=(await reader.readexactly(n)).decode(errors="replace"))
                waiting = self._pending.get(request_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            broken = HopError(f"connection lost ({type(exc).__name__})")
            for waiting in list(self._pending.values()):
                if not waiting.done():
                    waiting.set_exception(broken)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None

    async def close(self) -> None:
        """Close the connection (pending requests fail with HopError)."""
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
