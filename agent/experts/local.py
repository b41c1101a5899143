"""A local GGUF expert run by llama-cpp-python.

Plain chat (the overwhelming majority) goes through the model's batch engine
(``agent/experts/batching.py``): concurrent requests decode together as sequences of one
llama context, each with its own sampling, stop strings and seed, and every answer carries
its confidence (token log-probabilities under the model's own distribution). Requests
llama-cpp-python's chat handlers must serve (tools, a JSON ``response_format``, an explicit
``chat_format``, a GGUF without a chat template) run on the Llama's own context one at a
time, between two engine steps; they carry no confidence.

Every llama.cpp decode runs on one :class:`~agent.experts.batching.DecodeThread` (the
daemon's local experts share one): the caller waits on a queue fed from it. A client that
goes away cancels its sequence: the engine drops it at the next step and frees its KV
cells.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.cores import generation_threads
from agent.errors import ExpertCallError, RequestError
from agent.expert_settings import LocalExpertSettings
from agent.experts.base import Message
from agent.experts.batching import BatchEngine, BatchStats, DecodeThread, SequenceSpec
from agent.experts.chat_template import ChatTemplate
from agent.experts.info import ExpertInfo, local_info
from cloud_bridge.messages import message_text
from cloud_bridge.usage import TokenUsage
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece, fold

_END = object()
MESSAGE_MARGIN = 16  # role markers of one message (ChatML: about 5 tokens)
TEMPLATE_MARGIN = 64  # a template's default system prompt (Qwen2.5: about 30 tokens)
@contextmanager
def _context_checked(info: ExpertInfo) -> Iterator[None]:
    """llama.cpp refuses a prompt longer than its context with a ValueError; the policy
    routes such prompts elsewhere, so this is left for a named expert: a 400 naming
    ``messages``, never a 500. Likewise a streamed ``tool_choice: auto`` with the
    chatml-function-calling format: a 400 naming ``tool_choice``."""
    try:
        yield
    except ValueError as exc:
        if "context window" in str(exc):
            raise RequestError(f"the prompt does not fit expert {info.name!r}'s context of "
                               f"{info.context_tokens} tokens ({exc}); shorten the messages",
                               param="messages", code="context_length_exceeded") from exc
        if "tool choice is not supported" in str(exc):  # chatml-function-calling, streamed
            raise RequestError(f"expert {info.name!r} streams tool calls only for a named "
                               f"tool_choice ({exc}); name the function or send stream=false",
                               param="tool_choice", code="unsupported_tool_choice") from exc
        raise


def count_prompt_tokens(llama: Any, messages: list[Message]) -> int:
    """A model's own count of a chat prompt, from above: its tokenizer on each message plus
    a margin for the chat template's markers and default system prompt. Much tighter than
    the byte bound, so a 2,048-token context is not refused a prompt of 1,500 characters.
    ``llama`` may be a vocabulary-only load."""
    total = TEMPLATE_MARGIN
    for m in messages:
        text = message_text(m).encode("utf-8", "replace")
        total += len(llama.tokenize(text, add_bos=False, special=False)) + MESSAGE_MARGIN
    return total


def _context_checked_iter(info: ExpertInfo, chunks: Iterable[Any]) -> Iterator[Any]:
    with _context_checked(info):
        yield from chunks


class LocalExpert:
    """One loaded GGUF model. Build with :meth:`load`."""

    def __init__(self, info: ExpertInfo, llama: Any, path: Path, n_threads: int = 0, *,
                 engine: BatchEngine | None = None, template: ChatTemplate | None = None,
                 seed: int = 0, decode: DecodeThread | None = None,
                 owns_decode: bool = False) -> None:
        self.info = info
        self.path = path
        self.llama = llama
        self.n_threads = n_threads
        self.engine = engine
        self.template = template
        # the decode thread: the one given (closed by the expert if ``owns_decode``), the
        # engine's, else one of its own
        self._owns_decode = owns_decode or (decode is None and engine is None)
        self.decode = decode or (engine.decode if engine is not None
                                 else DecodeThread(f"llama-{info.name}"))
        self._seeds = random.Random(seed)  # seeds of requests without one, as llama-cpp-python
        self._async_lock: asyncio.Lock | None = None
        self._closed = False

    @classmethod
    def load(cls, settings: LocalExpertSettings, path: Path,
             decode: DecodeThread | None = None) -> LocalExpert:
        """Load the GGUF. Its decodes run on ``decode`` (the daemon passes the one its
        local experts share) or on a thread of the expert's own."""
        from llama_cpp import Llama  # heavy import, only when a model is really loaded

        owned = decode is None
        decode = decode or DecodeThread(f"llama-{settings.name}")

        threads = generation_threads(settings.n_threads).threads
        llama = Llama(
            model_path=str(path),
            n_ctx=settings.n_ctx,
            n_threads=threads,
            n_gpu_layers=settings.n_gpu_layers,
            chat_format=settings.chat_format,
            seed=settings.seed,
            verbose=False,
        )
        # Batching renders the GGUF's own template; an explicit chat_format is a
        # llama-cpp-python handler, served by it.
        template = ChatTemplate.of(llama) if settings.chat_format is None else None
        per_seq = settings.n_ctx_per_seq or settings.n_ctx
        engine = None
        if template is not None:
            engine = BatchEngine(llama, name=settings.name, n_parallel=settings.n_parallel,
                                 n_ctx_per_seq=per_seq, n_threads=threads, decode=decode,
                                 prompt_cache=settings.prompt_cache)
        slots = settings.n_parallel if engine is not None else 1
        info = local_info(settings, extra={
            "path": str(path), "n_threads": threads, "n_parallel": slots,
            "n_ctx_per_seq": per_seq if engine is not None else None}, concurrency=slots)
        return cls(info, llama, path, threads, engine=engine, template=template,
                   seed=settings.seed, decode=decode, owns_decode=owned)

    def prompt_tokens(self, messages: list[Message]) -> int:
        """This model's own count of a chat prompt (:func:`count_prompt_tokens`). The
        vocabulary is read-only: safe beside generation."""
        return count_prompt_tokens(self.llama, messages)

    def available(self) -> bool:
        """A loaded model can always take a call (admission queues them)."""
        return True

    def batch_stats(self) -> BatchStats | None:
        """The batch engine's figures for /metrics; None without an engine."""
        return self.engine.stats() if self.engine is not None else None

    def _lock(self) -> asyncio.Lock:
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        return self._async_lock

    def _batched(self, params: SamplingParams) -> bool:
        """Plain chat goes through the engine; tools and JSON mode need llama-cpp-python's
        chat handlers (function calling, grammar)."""
        return self.engine is not None and not (
            (params.tools and self.info.tools) or params.json_mode)

    def _check_open(self) -> None:
        """A closed model's memory is freed: a call must fail, not touch it."""
        if self._closed:
            raise ExpertCallError(self.info.name, "the model is closed (the daemon is "
                                  "shutting down)")

    def _spec(self, messages: list[Message], params: SamplingParams) -> SequenceSpec:
        assert self.template is not None
        self._check_open()
        try:
            prompt = self.template.tokens(messages)
        except ValueError as exc:  # the template's raise_exception (e.g. roles out of order)
            raise RequestError(f"expert {self.info.name!r}'s chat template refused the "
                               f"messages: {exc}", param="messages") from exc
        seed = params.seed if params.seed is not None else self._seeds.randrange(2**32)
        return SequenceSpec(tuple(prompt), params.max_tokens, params.temperature,
                            params.top_p, seed & 0xFFFFFFFF,
                            tuple(params.stop) + self.template.stop)

    def _kwargs(self, messages: list[Message], params: SamplingParams) -> dict[str, Any]:
        """OpenAI's arguments as llama-cpp-python takes them: its JSON mode is
        ``{"type": "json_object", "schema": ...}`` (a grammar from the schema, else any
        JSON); it has no ``user``; tools only when this expert declares them. No logprobs:
        the model is loaded without ``logits_all`` (it would hold n_ctx x vocabulary
        floats), and llama-cpp-python refuses ``top_logprobs`` then."""
        kw = params.openai_kwargs()
        for key in ("user", "logprobs", "top_logprobs"):
            kw.pop(key, None)
        if not self.info.tools:
            kw.pop("tools", None)
            kw.pop("tool_choice", None)
        fmt = kw.pop("response_format", None)
        if fmt is not None and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            fmt = {"type": "json_object", **({"schema": schema} if schema else {})}
        if fmt is not None and fmt.get("type") == "json_object":
            kw["response_format"] = fmt
        return {"messages": messages, **kw}

    # -- sync API (CLI, pipeline) -------------------------------------------------------
    def complete_sync(self, messages: list[Message], params: SamplingParams) -> ChatResult:
        if self._batched(params):
            return fold(self.stream_sync(messages, params, threading.Event()))

        def answer() -> Any:
            self._check_open()
            with _context_checked(self.info):
                return self.llama.create_chat_completion(**self._kwargs(messages, params))

        out = self.decode.run(answer)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return ChatResult(
            content=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=TokenUsage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            tool_calls=tuple(choice["message"].get("tool_calls") or ()),
        )

    def stream_sync(
        self, messages: list[Message], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[StreamPiece]:
        if not self._batched(params):
            yield from self._handler_stream_sync(messages, params, cancel)
            return
        assert self.engine is not None
        pieces: queue.SimpleQueue[StreamPiece | BaseException] = queue.SimpleQueue()
        handle = self.engine.submit(self._spec(messages, params), pieces.put)
        try:
            while True:
                try:
                    item = pieces.get(timeout=0.1)
                except queue.Empty:
                    if cancel.is_set():
                        return
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            handle.cancel()  # a no-op once finished

    def _handler_stream(
        self, messages: list[Message], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[StreamPiece]:
        """llama-cpp-python's chat handler, streaming. On the decode thread only: it holds
        every model until it ends (see :meth:`_pump`)."""
        self._check_open()
        with _context_checked(self.info):
            chunks = self.llama.create_chat_completion(
                **self._kwargs(messages, params), stream=True
            )
        n_out = 0
        finish: str | None = None
        try:
            for chunk in _context_checked_iter(self.info, chunks):
                if cancelled():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                calls = tuple(delta.get("tool_calls") or ())
                if text or calls:
                    n_out += 1
                    yield StreamPiece(content=text, tool_calls=calls)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        # After a chat completion the context holds prompt + generated tokens.
        n_prompt = max(int(self.llama.n_tokens) - n_out, 0)
        yield StreamPiece(finish_reason=finish or "stop", usage=TokenUsage(n_prompt, n_out))

    def _pump(self, messages: list[Message], params: SamplingParams,
              cancelled: Callable[[], bool], put: Callable[[Any], object]) -> None:
        """The decode thread's whole handler call: its pieces, an exception if one, then
        ``_END``, each to ``put``."""
        try:
            for piece in self._handler_stream(messages, params, cancelled):
                put(piece)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            put(_END)

    def _handler_stream_sync(
        self, messages: list[Message], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[StreamPiece]:
        pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
        left = threading.Event()  # the consumer stopped reading

        def cancelled() -> bool:
            return cancel.is_set() or left.is_set()

        self._check_open()  # a closed expert's decode thread may be gone
        self.decode.call(lambda: self._pump(messages, params, cancelled, pieces.put))
        try:
            while (item := pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            left.set()

    # -- async API (daemon) ---------------------------------------------------------------
    async def complete(self, messages: list[Message], params: SamplingParams) -> ChatResult:
        if self._batched(params):
            return await self._batched_complete(messages, params)
        async with self._lock():
            return await asyncio.to_thread(self.complete_sync, messages, params)

    async def stream(
        self, messages: list[Message], params: SamplingParams
    ) -> AsyncIterator[StreamPiece]:
        if not self._batched(params):
            async for piece in self._handler_stream_async(messages, params):
                yield piece
            return
        assert self.engine is not None
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[StreamPiece | BaseException] = asyncio.Queue()
        spec = await asyncio.to_thread(self._spec, messages, params)  # template + tokenizer
        handle = self.engine.submit(
            spec, lambda item: loop.call_soon_threadsafe(pieces.put_nowait, item))
        try:
            while True:
                item = await pieces.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            handle.cancel()  # a client that went away frees its slot at the next step

    async def _batched_complete(self, messages: list[Message],
                                params: SamplingParams) -> ChatResult:
        """The pieces gather on the decode thread; the event loop wakes once, for the
        answer, not once a token (on a 2-core device every wake takes CPU from the
        decode)."""
        assert self.engine is not None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ChatResult] = loop.create_future()
        spec = await asyncio.to_thread(self._spec, messages, params)  # template + tokenizer
        parts: list[StreamPiece] = []

        def settle(result: ChatResult | BaseException) -> None:
            if answer.done():  # the caller went away
                return
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        def sink(item: StreamPiece | BaseException) -> None:
            if isinstance(item, BaseException):
                loop.call_soon_threadsafe(settle, item)
                return
            parts.append(item)
            if item.finish_reason is not None:
                loop.call_soon_threadsafe(settle, fold(parts))

        handle = self.engine.submit(spec, sink)
        try:
            return await answer
        finally:
            handle.cancel()  # a client that went away frees its slot at the next step

    async def _handler_stream_async(
        self, messages: list[Message], params: SamplingParams
    ) -> AsyncIterator[StreamPiece]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, item)

        async with self._lock():
            self._check_open()  # a closed expert's decode thread may be gone
            task = asyncio.wrap_future(self.decode.call(
                lambda: self._pump(messages, params, cancel.is_set, put)))
            try:
                while True:
                    item = await pieces.get()
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancel.set()
                await asyncio.shield(task)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop the engine (running requests fail), then free the model between two
        decodes; then the decode thread, when it is the expert's own."""
        if self.engine is not None:
            self.engine.close()

        def free() -> None:
            if self._closed:
                return
            self._closed = True
            close = getattr(self.llama, "close", None)
            if close is not None:
                close()

        self.decode.run(free)
        if self._owns_decode:
            self.decode.close()
