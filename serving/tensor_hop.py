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

Both ends are asyncio protocols: the predictor answers each connection's requests in order, one at a time, in the
callback that completes a request frame (scoring is synchronous in its event loop, as over HTTP); the transformer
resolves the waiting request in the callback that completes its answer, and matches answers by request id, so a
request that missed its deadline is dropped and its late answer ignored. A frame the predictor cannot read (unknown
magic, implausible size) closes the connection; the transformer reconnects on its next request.
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
from typing import Any, cast

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
        self._connections: set[asyncio.Transport] = set()

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
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _ServerConnection(self), path=str(binding))
        os.chmod(binding, 0o600)
        os.replace(binding, self.path)  # appears listening and owner-only; replaces a dead process's socket
        try:
            if not self._stopping:
                await self._stopped.wait()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            for transport in list(self._connections):  # the transformer sees the connection end and reconnects
                transport.close()
            for _ in range(3):  # the closes take effect in the loop's next iterations
                await asyncio.sleep(0)

    def answer(self, request_id: int, rows: np.ndarray) -> bytes:
        """The answer frame for one request's float32 rows."""
        try:
            scores, fallback = self.score(rows)
        except InvalidInput as exc:
            return _message(request_id, INVALID, str(exc))
        except Exception as exc:  # a failing model answers an error, as the HTTP route's 500 does
            return _message(request_id, ERROR, f"{type(exc).__name__}: {exc}")
        n = len(scores)
        head = _ANSWER_HEAD.pack(request_id, OK, n)
        return head + np.asarray(scores, "<f8").tobytes() + np.asarray(fallback, np.uint8).tobytes()


class _ServerConnection(asyncio.Protocol):
    """One transformer connection to the predictor: request frames answered in order, as soon as each is whole
    (a protocol rather than streams: no task switch or future per request)."""

    def __init__(self, server: TensorServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.server._connections.add(self.transport)
        transport.write(self.server._hello)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer
        buffer += data
        while len(buffer) >= _REQUEST_HEAD.size:
            magic, request_id, rows, columns = _REQUEST_HEAD.unpack_from(buffer)
            if magic != REQUEST or rows > self.server.max_rows or columns > MAX_COLUMNS:
                buffer.clear()
                self.transport.close()  # not a frame of ours: nothing after it can be trusted
                return
            end = _REQUEST_HEAD.size + 4 * rows * columns
            if len(buffer) < end:
                return
            tensor = np.frombuffer(buffer[_REQUEST_HEAD.size : end], np.float32).reshape(rows, columns)  # a copy
            del buffer[:end]
            self.transport.write(self.server.answer(request_id, tensor))


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
        self._connection: _ClientConnection | None = None
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
            transport = await self._connect()
            request_id = next(self._ids) & 0xFFFFFFFF
            answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = answer
            try:
                data = np.ascontiguousarray(rows, "<f4")
                transport.write(_REQUEST_HEAD.pack(REQUEST, request_id, data.shape[0], data.shape[1]) + data.tobytes())
                return await answer
            finally:
                self._pending.pop(request_id, None)

    async def _connect(self) -> asyncio.Transport:
        transport = self._open_transport()
        if transport is not None:
            return transport
        async with self._connecting:
            transport = self._open_transport()  # another request may have connected meanwhile
            if transport is not None:
                return transport
            loop = asyncio.get_running_loop()
            try:
                transport, connection = await loop.create_unix_connection(
                    lambda: _ClientConnection(self), str(self.path)
                )
            except OSError as exc:
                raise HopError(f"{type(exc).__name__}: {exc}") from None
            try:
                self.hello = await connection.hello
            except BaseException:
                transport.close()
                raise
            self._connection = connection
            return transport

    def _open_transport(self) -> asyncio.Transport | None:
        """The current connection's transport while it is open (a lost connection is forgotten in `_lost`)."""
        transport = self._connection.transport if self._connection is not None else None
        return transport if transport is not None and not transport.is_closing() else None

    def _lost(self, connection: _ClientConnection, exc: Exception | None) -> None:
        """Fail what waits on a connection that ended (called by it)."""
        broken = HopError(f"connection lost ({type(exc).__name__ if exc is not None else 'closed by the predictor'})")
        for waiting in list(self._pending.values()):
            if not waiting.done():
                waiting.set_exception(broken)
        if self._connection is connection:
            self._connection = None

    async def close(self) -> None:
        """Close the connection (pending requests fail with HopError)."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.close()
            await asyncio.sleep(0)  # connection_lost runs in the loop's next iteration


class _ClientConnection(asyncio.Protocol):
    """The transformer's connection: the hello, then answer frames resolved as soon as each is whole (a protocol
    rather than streams: no reader task between the socket and the waiting request)."""

    def __init__(self, client: TensorClient) -> None:
        self.client = client
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(HopError(f"{self.client.path} closed before its hello"))
        self.client._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.hello.done():
            if len(buffer) < _HELLO_HEAD.size:
                return
            magic, length = _HELLO_HEAD.unpack_from(buffer)
            if magic != HELLO:
                self.hello.set_exception(HopError(f"{self.client.path} is not a predictor's tensor socket"))
                self._abandon()
                return
            if len(buffer) < _HELLO_HEAD.size + length:
                return
            try:
                self.hello.set_result(orjson.loads(bytes(buffer[_HELLO_HEAD.size : _HELLO_HEAD.size + length])))
            except orjson.JSONDecodeError:
                self.hello.set_exception(HopError(f"{self.client.path} sent a hello that is not JSON"))
                self._abandon()
                return
            del buffer[: _HELLO_HEAD.size + length]
        while len(buffer) >= _ANSWER_HEAD.size:
            request_id, status, n = _ANSWER_HEAD.unpack_from(buffer)
            end = _ANSWER_HEAD.size + (9 * n if status == OK else n)
            if len(buffer) < end:
                return
            body = bytes(buffer[_ANSWER_HEAD.size : end])
            del buffer[:end]
            if status == OK:
                answer = Answer(OK, np.frombuffer(body, "<f8", n), np.frombuffer(body, np.uint8, n, 8 * n).astype(bool))
            else:
                answer = Answer(status, message=body.decode(errors="replace"))
            waiting = self.client._pending.get(request_id)
            if waiting is not None and not waiting.done():
                waiting.set_result(answer)

    def _abandon(self) -> None:
        self.buffer.clear()
        if self.transport is not None:
            self.transport.close()
