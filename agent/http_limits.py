"""ASGI guard for request size: a body over the limit is refused with 413 before parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

from agent.errors import openai_error_body

Scope = dict[str, Any]


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``: by Content-Length up front, else while reading."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def message(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes; send a smaller request"

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            openai_error_body(
                self.message(),
                "invalid_request_error",
                "body",
                "request_too_large",
            )
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the app's handler
                    # turns it into the OpenAI error body.
                    raise HTTPException(413, detail=self.message())
            return message

        await self.app(scope, limited_receive, send)
