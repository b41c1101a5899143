"""The REST app: ``/predict``, OpenAI-compatible ``/v1/chat/completions``, models, health.

``create_app(settings, runtime)`` is the only way in; the runtime (loaded models, router)
is built before the server starts and kept on ``app.state``. Every error leaves as an
OpenAI-style body naming the bad field; nothing a client sends can produce a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.dashboard import PAGE_PATHS, dashboard_routes
from agent.decider import Hints
from agent.errors import (
    BundleError,
    ExpertCallError,
    ExpertUnavailableError,
    RequestError,
    openai_error_body,
)
from agent.http_limits import BodySizeLimit
from agent.http_security import BearerToken, HostAllowList, OriginGuard, read_token
from agent.outcome_recorder import FeedbackRequest, feedback_score
from agent.policy import Decision, tighter
from agent.runtime import Runtime
from agent.schemas import (
    ERROR_RESPONSES,
    STREAM_RESPONSE,
    ChatRequest,
    chunk_body,
    completion_body,
    new_id,
    openapi_limits,
    sampling_params,
)
from agent.settings import Settings
from cloud_bridge.messages import Message, message_text
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

log = logging.getLogger("edgeroute.app")


HINT_HEADERS = {"max_cost_usd": "x-edgeroute-max-cost-usd",
                "max_latency_ms": "x-edgeroute-max-latency-ms"}


def _hints(req: ChatRequest, request: Request) -> Hints:
    """Limits from the body's ``edgeroute`` field and the x-edgeroute-* headers (the
    stricter wins); they can only tighten the device's budgets."""
    values: dict[str, float | None] = {}
    for key, header in HINT_HEADERS.items():
        raw = request.headers.get(header)
        from_header = None
        if raw is not None:
            try:
                from_header = float(raw)
            except ValueError:
                from_header = float("nan")
            if not from_header >= 0 or from_header == float("inf"):
                raise RequestError(f"header {header} must be a non-negative number, got {raw!r}",
                                   param=header, code="invalid_value")
        from_body = getattr(req.edgeroute, key) if req.edgeroute else None
        values[key] = tighter(from_header, from_body)
    return Hints(**values, cascade=req.edgeroute.cascade if req.edgeroute else None)


def _check_messages(req: ChatRequest, messages: list[Message], settings: Settings) -> None:
    """The limits that depend on settings (the OpenAPI document states them too). A
    message's limit is on its text, its text parts joined. A chat without a user message
    is fine, as in OpenAI's API: the router scores the last one."""
    srv = settings.server
    if len(messages) > srv.max_messages:
        raise RequestError(
            f"{len(messages)} messages exceed the limit of {srv.max_messages}",
            param="messages",
            code="too_many_messages",
        )
    for i, (sent, m) in enumerate(zip(req.messages, messages, strict=True)):
        parts = sent.content if isinstance(sent.content, list) else ()
        if len(parts) > srv.max_content_parts:
            raise RequestError(
                f"messages.{i}.content has {len(parts)} content parts, more than the limit "
                f"of {srv.max_content_parts}", param=f"messages.{i}.content",
                code="too_many_content_parts")
        chars = len(message_text(m))
        if chars > srv.max_message_chars:
            raise RequestError(
                f"messages.{i}.content has {chars} characters, more than the limit "
                f"of {srv.max_message_chars}; send a shorter message",
                param=f"messages.{i}.content", code="message_too_long")


def _validation_param(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    # A union (``stop``: a string or a list) reports one error per member; the one that
    # is not a type mismatch says what is wrong, and member tags are not part of a field.
    first = next((e for e in errors if not str(e.get("type", "")).endswith("_type")),
                 errors[0])
    loc = [str(p) for p in first.get("loc", ())
           if p != "body" and not (isinstance(p, str) and ("[" in p or "-" in p))]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if param is None:
        return f"request body: {msg}; send a JSON object with 'messages'", None
    return f"{param}: {msg}", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_param(exc)
        return JSONResponse(
            openai_error_body(message, "invalid_request_error", param, "invalid_value"), 400
        )

    @app.exception_handler(RequestError)
    async def _request(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status_code, headers=exc.headers)

    @app.exception_handler(ExpertUnavailableError)
    async def _unavailable(_: Request, exc: ExpertUnavailableError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else {}
        body = openai_error_body(exc.message, "service_unavailable", None, "expert_unavailable")
        return JSONResponse(body, 503, headers=headers)

    @app.exception_handler(ExpertCallError)
    async def _expert(_: Request, exc: ExpertCallError) -> JSONResponse:
        body = openai_error_body(str(exc), "upstream_error", "model", "expert_failed")
        return JSONResponse(body, 502)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        param = "body" if exc.status_code == 413 else None
        # A 405 keeps Starlette's Allow header (RFC 9110).
        return JSONResponse(openai_error_body(str(exc.detail), kind, param, None),
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        body = openai_error_body("internal error; see the daemon log", "server_error")
        return JSONResponse(body, 500)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _open_stream(rt: Runtime, req: ChatRequest, messages: list[Message],
                       params: SamplingParams, decision: Decision) -> StreamingResponse:
    """Start the expert's stream and wait for its first piece *before* the HTTP response
    starts, so that a failure before the first byte (a full queue, a failed cloud call
    with fallback off) is a real status code (503/502), not a cut-off 200 stream. The
    response replays that first piece; however it ends (a client gone before the body
    started included), closing the dispatch frees its admission slot and ledger row."""
    it = rt.stream(decision, messages, params)
    try:
        first = await anext(it)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await it.aclose()
        raise

    async def replay() -> AsyncIterator[tuple[StreamPiece, Decision]]:
        try:
            if first is not None:
                yield first
                async for item in it:
                    yield item
        finally:
            await it.aclose()

    return StreamingResponse(_events(rt, replay(), req), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(it.aclose))


async def _replay(answer: ChatResult,
                  decision: Decision) -> AsyncIterator[tuple[StreamPiece, Decision]]:
    """A whole answer as a stream (a cascaded, buffered reply): one piece, as a plain
    call's answer travels (``ChatResult.as_piece``: its tool calls keep their index)."""
    yield answer.as_piece(), decision


def _openai_deltas(calls: tuple[dict[str, Any], ...], seen: set[int]) -> list[dict[str, Any]]:
    """Tool-call deltas the way OpenAI streams them, which is how clients accumulate
    them (they concatenate every string): id, type and name in a call's first delta
    only, then argument fragments. llama-cpp-python repeats id and name in every one."""
    out = []
    for call in calls:
        index = int(call.get("index", 0))
        fn = call.get("function") or {}
        if index in seen:
            out.append({"index": index, "function": {"arguments": fn.get("arguments") or ""}})
            continue
        seen.add(index)
        out.append({"index": index, "id": call.get("id"), "type": call.get("type", "function"),
                    "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}})
    return out


async def _events(rt: Runtime, stream: AsyncIterator[tuple[StreamPiece, Decision]],
                  req: ChatRequest) -> AsyncIterator[bytes]:
    cid, created = "", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    first = True
    seen_calls: set[int] = set()
    try:
        async for delta, dec in stream:
            cid = cid or dec.id or new_id()  # the decision's id: feedback names it
            chunk = partial(chunk_body, cid=cid, created=created, expert=dec.expert,
                            fingerprint=rt.experts[dec.expert].info.fingerprint)
            if first:
                yield _sse(chunk(delta={"role": "assistant", "content": ""},
                                 routing=dec.as_dict()))
                first = False
            logprobs = delta.logprobs if req.logprobs else None
            if delta.content or logprobs:
                yield _sse(chunk(delta={"content": delta.content}, logprobs=logprobs))
            if delta.tool_calls:
                yield _sse(chunk(delta={"tool_calls": _openai_deltas(delta.tool_calls,
                                                                     seen_calls)}))
            if delta.finish_reason is not None:
                yield _sse(chunk(delta={}, finish_reason=delta.finish_reason))
                if include_usage and delta.usage is not None:
                    yield _sse(chunk(delta={}, usage=delta.usage))
    except (ExpertCallError, ExpertUnavailableError) as exc:
        # After the first byte the status is sent: end with an in-band error, no [DONE].
        yield _sse(openai_error_body(str(exc), "upstream_error", "model", "expert_failed"))
        return
    yield b"data: [DONE]\n\n"


def install_sighup_reload(reload_router: Callable[[], object]) -> Callable[[], None]:
    """SIGHUP (``kill -HUP``, ``systemctl reload``) runs ``reload_router`` off the event
    loop; a refused bundle is logged and the old router keeps serving. Main thread only
    (elsewhere, and where there is no SIGHUP, it installs nothing). Returns the undo."""
    loop = asyncio.get_running_loop()

    def report(task: asyncio.Task[Any]) -> None:
        if task.exception() is not None:
            log.error("router reload on SIGHUP refused: %s", task.exception())

    def reload() -> None:
        loop.create_task(asyncio.to_thread(reload_router)).add_done_callback(report)

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        return lambda: None  # not the main thread (tests) or no SIGHUP (Windows)
    return undo


def _install_guards(app: FastAPI, settings: Settings) -> None:
    """Outermost first: Host allow-list, Origin of state-changing requests, CORS (only if
    origins are listed), bearer token (not for the dashboard's static page), body size.
    Starlette runs the last-added middleware first."""
    srv = settings.server
    app.add_middleware(BodySizeLimit, max_bytes=srv.max_body_bytes)
    if srv.api_token_file is not None:
        app.add_middleware(BearerToken, token=read_token(srv.api_token_file),
                           open_paths=PAGE_PATHS)
    if srv.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=srv.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(OriginGuard, allowed_origins=srv.cors_origins)
    app.add_middleware(HostAllowList, allowed=srv.allowed_hosts)


def _document_limits(app: FastAPI, settings: Settings, runtime: Runtime) -> None:
    """The OpenAPI document states this daemon's own limits (settings, not constants) and
    what its experts can do (no expert with tools: ``tools`` may only be empty)."""
    generate = app.openapi
    srv = settings.server
    infos = [e.info for e in runtime.experts.values()]

    def openapi() -> dict[str, Any]:
        return openapi_limits(generate(), max_messages=srv.max_messages,
                              max_tokens_cap=srv.max_tokens_cap,
                              max_message_chars=srv.max_message_chars,
                              max_content_parts=srv.max_content_parts,
                              tools=any(i.tools for i in infos),
                              json_mode=any(i.json_mode for i in infos),
                              modalities=frozenset().union(*(i.modalities for i in infos)))

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, runtime: Runtime) -> FastAPI:
    """The ASGI app for one runtime. Closing the app closes the runtime's experts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime
        app.state.settings = settings
        hup = install_sighup_reload(runtime.reload_router)
        runtime.start_background()
        try:
            yield
        finally:
            hup()
            await runtime.aclose()

    app = FastAPI(title="edgeroute", version="0.1.0", lifespan=lifespan)
    _install_guards(app, settings)
    _document_limits(app, settings, runtime)
    _install_error_handlers(app)

    async def _answer(req: ChatRequest, request: Request) -> Any:
        messages = req.plain_messages()
        _check_messages(req, messages, settings)
        params = sampling_params(req, settings.server)
        hints = _hints(req, request)
        decision = runtime.decide(req.model, messages, params, hints)
        first, decision = runtime.cascade.first(decision, params, req.model != "auto", hints,
                                                stream=bool(req.stream))
        if req.stream and first is None:
            return await _open_stream(runtime, req, messages, params, decision)
        completion, decision = await runtime.complete(decision, messages, params,
                                                      cascade_first=first)
        if req.stream:  # cascade_stream: the kept or escalated answer, buffered
            return StreamingResponse(_events(runtime, _replay(completion, decision), req),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return completion_body(
            cid=decision.id or new_id(),
            expert=decision.expert,
            content=completion.content,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            routing=decision.as_dict(),
            fingerprint=runtime.experts[decision.expert].info.fingerprint,
            tool_calls=completion.tool_calls,
            logprobs=completion.logprobs if req.logprobs else None,
        )

    chat_responses = STREAM_RESPONSE | ERROR_RESPONSES

    @app.post("/predict", summary="Route one chat query and answer it (seed API).",
              responses=chat_responses)
    async def predict(req: ChatRequest, request: Request) -> Any:
        return await _answer(req, request)

    @app.post("/v1/chat/completions", summary="OpenAI-compatible chat completions.",
              responses=chat_responses)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        return await _answer(req, request)

    @app.post("/v1/route", summary="Decide who would answer, without answering.",
              responses=ERROR_RESPONSES)
    async def route(req: ChatRequest, request: Request) -> dict[str, Any]:
        """The chat request's routing decision (per-expert P(correct), expected and
        worst-case cost, expected latency, feasibility, the chosen expert and why), as the
        same request to ``/v1/chat/completions`` would be decided now. No expert is called
        and the ledger is not touched; validation, limits and Host checks are chat's."""
        messages = req.plain_messages()
        _check_messages(req, messages, settings)
        params = sampling_params(req, settings.server)
        decision = runtime.decide(req.model, messages, params, _hints(req, request),
                                  served=False)
        if runtime.outcomes is not None:
            runtime.outcomes.routed(decision)
        return {"object": "edgeroute.route", "id": decision.id, "created": int(time.time()),
                "model": decision.expert, "routing": decision.as_dict()}

    @app.post("/v1/feedback", summary="Score an answer by its id (0-1, or thumbs up/down).",
              responses=ERROR_RESPONSES)
    async def feedback(req: FeedbackRequest) -> dict[str, Any]:
        """The outcome of one answer (a reply's ``id``, or a route call's): stored for
        the profile refit (``edgeroute profile update``); a second score replaces the
        first. An id this device has no answer for is a 404 naming ``id``."""
        recorder = runtime.outcomes
        if recorder is None or not settings.outcomes.feedback:
            raise RequestError("feedback is off on this device (outcomes.enabled, "
                               "outcomes.feedback)", param="id", code="feedback_disabled",
                               status_code=403)
        try:
            score = feedback_score(req.score, req.thumbs)
        except ValueError as exc:
            raise RequestError(str(exc), param="score", code="invalid_value") from exc
        return recorder.feedback(req.id, score)

    @app.get("/v1/models", summary="The experts, plus 'auto'.", responses=ERROR_RESPONSES)
    async def models() -> dict[str, Any]:
        created = int(runtime.started_at)
        data = [{"id": "auto", "object": "model", "created": created, "owned_by": "edgeroute"}]
        data += [
            {"id": name, "object": "model", "created": created,
             "owned_by": f"edgeroute-{e.info.kind}"}
            for name, e in runtime.experts.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/admin/router/reload", summary="Re-read the router bundle; atomic swap.",
              responses=ERROR_RESPONSES)
    async def reload_router() -> dict[str, Any]:
        try:
            return await asyncio.to_thread(runtime.reload_router)
        except BundleError as exc:
            raise RequestError(str(exc), param="router.bundle", code="bundle_refused",
                               status_code=409) from exc

    @app.get("/metrics", summary="Prometheus metrics.", include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness and what is loaded.", responses=ERROR_RESPONSES)
    async def health() -> dict[str, Any]:
        return runtime.health()

    app.include_router(dashboard_routes(runtime))  # GET /, /ui, /v1/dashboard
    return app
