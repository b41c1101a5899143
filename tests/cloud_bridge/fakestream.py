"""A FAKE OpenAI-compatible streaming server on loopback, for peer behaviour a real
llama.cpp server cannot produce on demand: an answer that streams steadily for a minute
(one token every ``interval_s``), or one that stalls after a few tokens. It speaks just
enough HTTP/1.1 and SSE for ``/v1/chat/completions`` with ``"stream": true``: a chunk per
token, a usage chunk, ``[DONE]``. Plain (``"stream": false``) requests get the whole
answer as one chat.completion after the same total time. Runs its own event loop in a
thread, like the fault proxy.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

from tests.cloud_bridge.faultproxy import read_request


@dataclass
class FakeStreamOptions:
    tokens: int = 10
    interval_s: float = 0.1
    stall_after: int | None = None  # go silent (connection open) after this many tokens


class FakeStreamServer:
    """``with FakeStreamServer(FakeStreamOptions(...)) as fake:`` then ``fake.base_url()``."""

    def __init__(self, options: FakeStreamOptions | None = None) -> None:
        self.options = options or FakeStreamOptions()
        self.requests: list[dict[str, object]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> FakeStreamServer:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop)
        self._server = fut.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: several requests per connection
                _, body = await read_request(reader)
                request = json.loads(body or b"{}")
                self.requests.append(request)
                if request.get("stream"):
                    await self._stream(writer)
                else:
                    await self._plain(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        opts = self.options
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")

        def event(obj: object) -> None:
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        for i in range(opts.tokens):
            if opts.stall_after is not None and i >= opts.stall_after:
                await asyncio.sleep(3600)  # silent, connection open
            await asyncio.sleep(opts.interval_s)
            event({"choices": [{"index": 0, "delta": {"content": f" t{i}"},
                                "finish_reason": None}]})
            await writer.drain()
        event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": opts.tokens,
                                        "total_tokens": 7 + opts.tokens}})
        done = b"data: [DONE]\n\n"
        writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        await writer.drain()

    async def _plain(self, writer: asyncio.StreamWriter) -> None:
        opts = self.options
        await asyncio.sleep(opts.interval_s * opts.tokens)
        body = json.dumps({
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": "".join(f" t{i}" for i in
                                                                    range(opts.tokens))},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": opts.tokens,
                      "total_tokens": 7 + opts.tokens}}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
