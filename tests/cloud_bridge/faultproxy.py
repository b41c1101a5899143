"""A small asyncio TCP proxy on loopback that breaks connections on purpose.

It sits in front of the real OpenAI-compatible server and applies one fault per accepted
connection (a plan of faults, then a default). Toxiproxy is not installable here and tc
netem needs privileges, so this is our network. Faults that forward to the real server
(pass, reset mid-body, slow drip) are real peer behaviour on a real socket. The status
faults (429 with Retry-After, 500, 307 redirect) are synthesized by the proxy itself: a
real llama.cpp server cannot be made to answer them on demand, so they are named as such.

It runs its own event loop in a thread, so sync code (the bench) can use it too.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


class Fault(enum.Enum):
    PASS = "pass"
    SILENCE = "silence"  # accept, read the request, never answer
    RESET_MID_BODY = "reset_mid_body"  # forward the head and some body, then TCP RST
    SLOW_DRIP = "slow_drip"  # forward the answer a few bytes at a time
    STATUS_429 = "status_429"  # synthesized: 429 with Retry-After
    STATUS_500 = "status_500"  # synthesized: 500 with an OpenAI error body
    STATUS_503 = "status_503"  # synthesized: 503, the same body every time
    REDIRECT = "redirect"  # synthesized: 307 to redirect_to


@dataclass
class ProxyOptions:
    retry_after: str = "1"
    reset_after_body_bytes: int = 16
    drip_bytes: int = 4
    drip_interval_s: float = 0.1
    redirect_to: str = "http://127.0.0.1:9/v1/chat/completions"


def _error_json(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": None}}).encode()


def _synth(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``with FaultProxy(port) as proxy:`` then point a client at ``proxy.base_url``."""

    def __init__(self, upstream_port: int, options: ProxyOptions | None = None) -> None:
        self.upstream_port = upstream_port
        self.options = options or ProxyOptions()
        self.default = Fault.PASS
        self.plan: deque[Fault] = deque()
        self.applied: list[Fault] = []
        self.request_heads: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control (from the test's thread) -------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set_plan(self, faults: Iterable[Fault], default: Fault = Fault.PASS) -> None:
        """Faults for the next connections, in order; then ``default`` for the rest."""
        self.plan = deque(faults)
        self.default = default

    def refuse(self) -> None:
        """Stop listening: from now on connections are refused by the kernel."""
        self._call(self._shutdown())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    # -- per connection (proxy thread) ---------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        fault = self.plan.popleft() if self.plan else self.default
        self.applied.append(fault)
        try:
            if fault in (Fault.PASS, Fault.RESET_MID_BODY, Fault.SLOW_DRIP):
                await self._forward(reader, writer, fault)
            else:
                await self._synthesize(reader, writer, fault)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.transport.abort()

    async def _synthesize(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          fault: Fault) -> None:
        head, _ = await read_request(reader)
        self.request_heads.append(head)
        if fault is Fault.SILENCE:
            await reader.read()  # until the client gives up and closes
            return
        if fault is Fault.STATUS_429:
            data = _synth("429 Too Many Requests", {"Retry-After": self.options.retry_after,
                          "Content-Type": "application/json"},
                          _error_json("rate limited (synthesized by FaultProxy)",
                                      "rate_limit_error"))
        elif fault is Fault.STATUS_500:
            data = _synth("500 Internal Server Error", {"Content-Type": "application/json"},
                          _error_json("upstream crashed (synthesized by FaultProxy)",
                                      "server_error"))
        elif fault is Fault.STATUS_503:
            data = _synth("503 Service Unavailable", {"Content-Type": "application/json"},
                          _error_json("overloaded (synthesized by FaultProxy)",
                                      "server_error"))
        else:
            data = _synth("307 Temporary Redirect", {"Location": self.options.redirect_to})
        writer.write(data)
        await writer.drain()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       fault: Fault) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upstream = asyncio.ensure_future(self._client_to_upstream(reader, up_writer))
        try:
            if fault is Fault.PASS:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            elif fault is Fault.SLOW_DRIP:
                await self._drip(up_reader, writer)
            else:
                await self._reset_mid_body(up_reader, writer)
        finally:
            upstream.cancel()
            up_writer.transport.abort()

    async def _client_to_upstream(self, reader: asyncio.StreamReader,
                                  up_writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        self.request_heads.append(head)
        up_writer.write(head + body)
        await up_writer.drain()
        while data := await reader.read(65536):  # later requests on a kept-alive connection
            up_writer.write(data)
            await up_writer.drain()
        up_writer.transport.abort()  # the client left: so does the proxy's upstream leg

    async def _drip(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opts = self.options
        while data := await up_reader.read(65536):
            for i in range(0, len(data), opts.drip_bytes):
                writer.write(data[i:i + opts.drip_bytes])
                await writer.drain()
                await asyncio.sleep(opts.drip_interval_s)

    async def _reset_mid_body(self, up_reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        buf = b""
        while data := await up_reader.read(65536):
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0 and len(buf) - (end + 4) >= self.options.reset_after_body_bytes:
                writer.write(buf[: end + 4 + self.options.reset_after_body_bytes])
                await writer.drain()
                while writer.transport.get_write_buffer_size():
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)  # let the client read what it got first
                _rst(writer)
                return
        writer.write(buf)  # the answer was shorter than the reset point
