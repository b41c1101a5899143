"""Continuous batching: concurrent requests to one local model share one llama context as
separate sequences.

Where decoding a small GGUF is bound by reading the weights (a Jetson, a many-core CPU),
one ``llama_decode`` over a token of each of four sequences reads them once, so aggregate
tokens/s rises several-fold at little cost to each stream; on a 2-core CPU that is nearly
compute-bound already it rises about 1.3x, as llama.cpp's own server does (docs/benchmarks.md).
Each step of an engine:

1. waiting requests take free sequence slots: a new request joins at the next step, in the
   free slot whose cached tokens share the longest prefix with its prompt (ties: the
   lowest id), and decodes only the rest of its prompt (``prompt_cache``);
2. one batch in sequence-id order: the last sampled token of every generating sequence
   and, in the room left (``n_batch`` in all), the prompt tokens of sequences still
   reading their prompt;
3. one ``llama_decode``;
4. for each sequence with an output: its token's log-probability under the raw logits (the
   answer's confidence), then a sample from its own sampler chain (temperature, top_p,
   seed); it ends on an end-of-generation token, a stop string or ``max_tokens``; its
   slot is free at once and its KV cells stay as the slot's cache.

The prompt cache is llama-server's ``cache_prompt``: a chat's next turn, an agent's long
system prompt, or only the chat template's fixed head are not decoded again (on this 2-core
CPU a prompt token costs about 8 ms in a batch, so 43 prompt tokens were most of the gap to
llama-server on 64-token answers; docs/benchmarks.md). With it, a prefix's KV cells may come from
a batch of another shape than a fresh decode would use, so with temperature 0 an answer
can differ from the uncached one where two tokens' logits differ in the last float digits,
as llama-server documents; ``prompt_cache=False`` frees the cells at once.

Every sequence has its own KV stream (``kv_unified`` off), positions from 0, so it sees
the same cells batched as alone: with temperature 0 a batched request gets the tokens it
gets alone, its log-probabilities equal up to float noise (a 4-column GEMM sums in
another order than the lone GEMV; tests/agent/test_batching.py). Results go to a per-request sink,
called on the decode thread (the async side hands them to its event loop).

Every engine of a process steps on one :class:`DecodeThread`, and calls that need
llama-cpp-python's own chat handlers (grammar, tools) run there too, between two steps:
llama.cpp as pip builds it uses OpenMP, which keeps a team of worker threads for each
thread that decodes; with more workers than CPUs libgomp stops spinning at the hundreds of
barriers of a decode and sleeps on a futex at each. A second model's engine thread cost
Qwen a quarter of its single-stream tokens/s that way (docs/benchmarks.md); one decoding thread
keeps one team, and two models never fight over the cores.

Errors: a request that cannot fit its sequence's share of the context is a
:class:`~agent.errors.RequestError` at submit (``messages`` or ``max_tokens``); a failed
decode or a closed engine reaches the request's sink as an
:class:`~agent.errors.ExpertCallError`.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from agent.errors import ExpertCallError, RequestError
from cloud_bridge.usage import TokenUsage
from cloud_bridge.wire import AnswerConfidence, StreamPiece

log = logging.getLogger("edgeroute.batching")

Sink = Callable[[StreamPiece | BaseException], object]
T = TypeVar("T")
TOP_K = 40  # llama-cpp-python's chat-completion defaults: sampled answers read as before
MIN_P = 0.05
N_BATCH = 512  # tokens one step decodes at most (prompt chunks included)


@dataclass(frozen=True)
class SequenceSpec:
    """One request as the engine runs it: prompt tokens and how to sample after them."""

    prompt: tuple[int, ...]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # > 0: record each token's log-probability and its k best rivals


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token under the model's untempered distribution, with the ``top``
    most likely tokens at its position (OpenAI's ``top_logprobs``), best first. Recorded
    only when a request asks (``SequenceSpec.top_logprobs``): it costs a partial sort of
    the vocabulary per token."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class BatchStats:
    """What ``/metrics`` shows of an engine."""

    slots: int  # sequences one step can decode together (n_parallel)
    active: int  # sequences holding a slot now
    waiting: int  # requests waiting for a slot
    batch_sequences: int  # sequences the last step decoded
    batch_tokens: int  # tokens the last step decoded (prompt chunks included)
    steps: int
    generated_tokens: int
    max_batch_sequences: int  # the most sequences one step has decoded
    prompt_tokens: int = 0  # prompt tokens of the requests admitted
    cached_prompt_tokens: int = 0  # of those, taken from a slot's cache, not decoded


def context_params(n_parallel: int, n_ctx_per_seq: int, n_threads: int) -> Any:
    """The engine's llama context: ``n_parallel`` sequences of ``n_ctx_per_seq`` cells, each
    with its own KV stream (``kv_unified`` off), batches of at most ``N_BATCH`` tokens."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_parallel * n_ctx_per_seq
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = n_parallel
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = n_threads
    params.no_perf = True
    return params


class DecodeThread:
    """The one thread that runs llama.cpp for every local model of a process: the steps of
    each attached :class:`BatchEngine` in turn, and exclusive calls (:meth:`call`: a chat
    handler's whole answer, freeing a model) between two steps. Waiting calls go before the
    next step, so a busy batch cannot starve them; a call holds every model until it
    returns. Started on first use; :meth:`close` stops it after the calls already queued."""

    def __init__(self, name: str = "llama-decode") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._engines: list[BatchEngine] = []
        self._calls: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False

    def attach(self, engine: BatchEngine) -> None:
        with self._cond:
            self._engines.append(engine)

    def detach(self, engine: BatchEngine) -> None:
        with self._cond:
            if engine in self._engines:
                self._engines.remove(engine)

    def wake(self) -> None:
        """An engine has new work (call after queueing it)."""
        with self._cond:
            self._start()
            self._cond.notify()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the decode thread between two steps; its result or exception
        goes to the returned future."""
        future: Future[T] = Future()
        with self._cond:
            if self._closing:
                raise RuntimeError(f"{self.name} is closed")
            self._calls.append((future, fn))
            self._start()
            self._cond.notify()
        return future

    def run(self, fn: Callable[[], T]) -> T:
        """:meth:`call` and wait for it. On the decode thread itself, or once the thread
        has stopped (nothing can decode then), ``fn`` runs at once."""
        with self._cond:
            stopped = self._closing and (self._thread is None or not self._thread.is_alive())
        if stopped or self.on_thread():
            return fn()
        return self.call(fn).result()

    def close(self) -> None:
        """Stop after the queued calls (engines are closed by their owners first)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _start(self) -> None:  # with self._cond held
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._calls or self._closing
                           or any(e.has_work() for e in self._engines)):
                    self._cond.wait()
                calls = list(self._calls)
                self._calls.clear()
                if self._closing and not calls:
                    return
                engines = list(self._engines)
            for future, fn in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the caller, raised there
                        future.set_exception(exc)
            for engine in engines:
                if engine.has_work():
                    engine.step()


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...], most: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``most``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= most or x != y:
            break
        n += 1
    return n


class _Text:
    """Generated bytes to text: UTF-8 decoded incrementally (a character split across
    tokens waits for its last byte), held back while it could still become a stop string,
    cut before the first stop string."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        self._held += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> str:
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        held = self._held
        cuts = [i for s in self._stop if (i := held.find(s)) >= 0]
        if cuts:
            self._held, self.stopped = "", True
            return held[:min(cuts)]
        keep = 0 if final else self._partial_stop(held)
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep]

    def _partial_stop(self, held: str) -> int:
        """Length of the longest end of ``held`` that begins a stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(held)), best, -1):
                if held.endswith(s[:k]):
                    best = k
                    break
        return best


@dataclass(eq=False)
class SequenceHandle:
    """A submitted request. ``cancel`` ends it at the next step (a client that left);
    ``tokens`` are the ids generated so far (end-of-generation excluded)."""

    spec: SequenceSpec
    sink: Sink
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # with spec.top_logprobs
    cancelled: bool = False
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Seq:
    handle: SequenceHandle
    seq_id: int
    sampler: Any  # llama_cpp._internals.LlamaSampler
    text: _Text
    n_past: int = 0  # tokens of this sequence in the KV cache
    last: int = -1  # sampled, not yet decoded
    lp_sum: float = 0.0
    lp_min: float = math.inf
    cached: int = 0  # prompt tokens the slot's cache held at admission

    @property
    def reading_prompt(self) -> bool:
        return self.n_past < len(self.handle.spec.prompt)


class BatchEngine:
    """Continuous batching over one llama context of ``n_parallel`` sequences of
    ``n_ctx_per_seq`` cells each, on the model of a loaded ``llama_cpp.Llama`` (its
    weights are shared; the Llama keeps its own context for exclusive calls). It steps on
    ``decode`` (shared by the process's local models) or on a thread of its own."""

    def __init__(self, llama: Any, *, name: str, n_parallel: int, n_ctx_per_seq: int,
                 n_threads: int, decode: DecodeThread | None = None,
                 prompt_cache: bool = True) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self._ll = llama_cpp
        self._internals = _internals
        self.name = name
        self.n_parallel = n_parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self._owns_decode = decode is None
        self.decode = decode or DecodeThread(f"llama-{name}")
        params = context_params(n_parallel, n_ctx_per_seq, n_threads)
        self._model = llama._model
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        if llama_cpp.llama_n_ctx_seq(self._ctx.ctx) < n_ctx_per_seq:
            raise ValueError(f"llama.cpp gave {name!r} fewer cells per sequence than "
                             f"{n_ctx_per_seq}")
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = _internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1,
                                            verbose=False)
        self._piece_buf = ctypes.create_string_buffer(256)
        import numpy

        self._np = numpy
        self._cond = threading.Condition()
        self._waiting: deque[SequenceHandle] = deque()
        self._active: list[_Seq] = []
        self._free_ids = list(range(n_parallel))
        self.prompt_cache = prompt_cache
        self._cached: dict[int, tuple[int, ...]] = {}  # slot -> the tokens its KV cells hold
        self._closing = False
        self._stats = BatchStats(n_parallel, 0, 0, 0, 0, 0, 0, 0)
        self.decode.attach(self)

    # -- the request side (any thread) -----------------------------------------------------
    def submit(self, spec: SequenceSpec, sink: Sink) -> SequenceHandle:
        """Queue a request; its pieces, then a last piece with finish_reason, usage and
        confidence, go to ``sink`` from the engine thread. Raises RequestError when it
        cannot fit a sequence's share of the context."""
        n_prompt, cap = len(spec.prompt), self.n_ctx_per_seq
        if n_prompt >= cap:
            raise RequestError(
                f"the prompt ({n_prompt} tokens) does not fit expert {self.name!r}'s context "
                f"of {cap} tokens per request; shorten the messages",
                param="messages", code="context_length_exceeded")
        if n_prompt + spec.max_tokens > cap:
            raise RequestError(
                f"the prompt ({n_prompt} tokens) plus max_tokens ({spec.max_tokens}) exceeds "
                f"expert {self.name!r}'s context of {cap} tokens per request; ask for at "
                f"most {cap - n_prompt} tokens", param="max_tokens",
                code="context_length_exceeded")
        handle = SequenceHandle(spec, sink)
        with self._cond:
            if self._closing:
                raise ExpertCallError(self.name, "the model is shutting down")
            self._waiting.append(handle)
        self.decode.wake()
        return handle

    def stats(self) -> BatchStats:
        return replace(self._stats, active=len(self._active), waiting=len(self._waiting))

    def close(self) -> None:
        """Between two steps: fail the requests still running or waiting (an
        ExpertCallError), free the context. Before the model is freed."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        self.decode.run(self._close_now)
        if self._owns_decode:
            self.decode.close()

    def _close_now(self) -> None:
        self.decode.detach(self)
        self._fail_all(ExpertCallError(self.name, "the model is shutting down"))
        self._batch.close()
        self._ctx.close()

    # -- on the decode thread ---------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self._waiting or self._active)

    def step(self) -> None:
        """One batch step; a failed step fails its requests, not the engine."""
        try:
            self._step()
        except Exception as exc:
            log.exception("batch step of %s failed", self.name)
            self._fail_all(ExpertCallError(self.name, f"batch step failed: {exc}"))

    def _step(self) -> None:
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._finish(seq, "cancelled")
        self._admit()
        if not self._active:
            return
        outputs = self._fill_batch()
        rc = self._ll.llama_decode(self._ctx.ctx, self._batch.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        n_tokens = int(self._batch.batch.n_tokens)
        for seq, index in outputs:
            self._next_token(seq, index)
        s = self._stats
        self._stats = replace(s, batch_sequences=len(outputs), batch_tokens=n_tokens,
                              steps=s.steps + 1, generated_tokens=s.generated_tokens + len(outputs),
                              max_batch_sequences=max(s.max_batch_sequences, len(outputs)))

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and self._free_ids:
                handle = self._waiting.popleft()
                if handle.cancelled:
                    handle.finished = True
                    continue
                spec = handle.spec
                seq_id, reuse = self._slot_for(spec.prompt)
                self._free_ids.remove(seq_id)
                self._active.append(_Seq(handle, seq_id, self._sampler(spec),
                                         _Text(spec.stop), n_past=reuse, cached=reuse))
                s = self._stats
                self._stats = replace(s, prompt_tokens=s.prompt_tokens + len(spec.prompt),
                                      cached_prompt_tokens=s.cached_prompt_tokens + reuse)

    def _slot_for(self, prompt: tuple[int, ...]) -> tuple[int, int]:
        """The free slot whose cached tokens share the longest prefix with ``prompt`` (ties:
        the lowest id, which keeps running ids consecutive, see _fill_batch) and how many
        prompt tokens its cache already holds; every other cell of the slot is dropped. At
        least the prompt's last token is decoded again: its logits give the first sample."""
        best, best_n = min(self._free_ids), 0
        if self.prompt_cache:
            for seq_id in sorted(self._free_ids):
                n = _common_prefix(self._cached.get(seq_id, ()), prompt, len(prompt) - 1)
                if n > best_n:
                    best, best_n = seq_id, n
        if not (best_n and self._ll.llama_memory_seq_rm(self._memory, best, best_n, -1)):
            best_n = 0
            self._ll.llama_memory_seq_rm(self._memory, best, -1, -1)
        self._cached.pop(best, None)
        return best, best_n

    def _sampler(self, spec: SequenceSpec) -> Any:
        sampler = self._internals.LlamaSampler()
        if spec.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(TOP_K)
            sampler.add_top_p(spec.top_p, 1)
            sampler.add_min_p(MIN_P, 1)
            sampler.add_temp(spec.temperature)
            sampler.add_dist(spec.seed)
        return sampler

    def _fill_batch(self) -> list[tuple[_Seq, int]]:
        """One token per generating sequence, prompt chunks in the room left, all in
        sequence-id order. Returns (sequence, batch index) for every output to sample."""
        b = self._batch.batch
        n = 0
        outputs: list[tuple[_Seq, int]] = []

        def put(seq: _Seq, token: int, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.n_seq_id[n] = token, seq.n_past, 1
            b.seq_id[n][0], b.logits[n] = seq.seq_id, logits
            if logits:
                outputs.append((seq, n))
            seq.n_past += 1
            n += 1

        # In sequence-id order: llama.cpp splits a batch over per-sequence KV streams into
        # one ubatch only while the ids run consecutively (llama_batch_allocr::split_equal,
        # sequential); out of order, four sequences cost four decodes (docs/benchmarks.md).
        # Every generating sequence's token has its place; prompts share what is left.
        prompt_room = N_BATCH - sum(not s.reading_prompt for s in self._active)
        for seq in sorted(self._active, key=lambda s: s.seq_id):
            if not seq.reading_prompt:
                put(seq, seq.last, True)
                continue
            prompt = seq.handle.spec.prompt
            while seq.reading_prompt and prompt_room > 0:
                put(seq, prompt[seq.n_past], seq.n_past == len(prompt) - 1)
                prompt_room -= 1
        b.n_tokens = n
        return outputs

    def _next_token(self, seq: _Seq, index: int) -> None:
        ll, np = self._ll, self._np
        logits = ll.llama_get_logits_ith(self._ctx.ctx, index)
        row = np.ctypeslib.as_array(logits, shape=(self._n_vocab,))
        peak = float(row.max())
        log_z = peak + math.log(float(np.exp(row - peak).sum(dtype=np.float64)))
        token = int(ll.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, index))
        handle = seq.handle
        lp = float(row[token]) - log_z
        if handle.spec.top_logprobs > 0:  # the end-of-generation token's too: it was a choice
            handle.logprobs.append(self._token_logprob(row, log_z, token, lp,
                                                       handle.spec.top_logprobs))
        if ll.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, "stop")
            return
        handle.tokens.append(token)
        seq.lp_sum += lp
        seq.lp_min = min(seq.lp_min, lp)
        seq.last = token
        text = seq.text.feed(self._piece(token))
        if text:
            self._emit(handle, StreamPiece(content=text))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif len(handle.tokens) >= handle.spec.max_tokens or seq.n_past >= self.n_ctx_per_seq:
            self._finish(seq, "length")

    def _token_logprob(self, row: Any, log_z: float, token: int, lp: float,
                       k: int) -> TokenLogprob:
        np = self._np
        k = min(k, self._n_vocab)
        best = np.argpartition(row, -k)[-k:]
        ranked = sorted(((int(i), float(row[i]) - log_z) for i in best), key=lambda t: -t[1])
        return TokenLogprob(token, lp, tuple(ranked))

    def piece_text(self, token: int) -> str:
        """A token's text (its bytes decoded; a partial UTF-8 character is replaced). Any
        thread: the vocabulary is read-only, and this call has a buffer of its own."""
        return self._piece(token, ctypes.create_string_buffer(256)).decode("utf-8", "replace")

    def _piece(self, token: int, buf: Any = None) -> bytes:
        buf = self._piece_buf if buf is None else buf
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:  # a piece longer than the buffer
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return bytes(buf.raw[:n])

    def _finish(self, seq: _Seq, reason: str) -> None:
        handle = seq.handle
        if reason != "cancelled":
            tail = seq.text.flush()
            if tail:
                self._emit(handle, StreamPiece(content=tail))
        n = len(handle.tokens)
        confidence = AnswerConfidence(seq.lp_sum / n, seq.lp_min, n) if n else None
        self._release(seq, keep=True)
        self._emit(handle, StreamPiece(finish_reason=reason,
                                       usage=TokenUsage(len(handle.spec.prompt), n,
                                                        cached_prompt_tokens=seq.cached),
                                       confidence=confidence))

    def _release(self, seq: _Seq, keep: bool = False) -> None:
        """Free the sequence's slot; its KV cells stay as the slot's cache (``keep`` and
        ``prompt_cache``: they hold the prompt and the answer tokens decoded so far) or are
        freed."""
        if keep and self.prompt_cache:
            self._cached[seq.seq_id] = (seq.handle.spec.prompt
                                        + tuple(seq.handle.tokens))[:seq.n_past]
        else:
            self._ll.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
        seq.sampler.close()
        seq.handle.finished = True
        with self._cond:
            self._active.remove(seq)
            self._free_ids.append(seq.seq_id)

    def _fail_all(self, exc: ExpertCallError) -> None:
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        for seq in list(self._active):
            self._release(seq)
            self._emit(seq.handle, exc)
        for handle in waiting:
            handle.finished = True
            self._emit(handle, exc)

    def _emit(self, handle: SequenceHandle, item: StreamPiece | BaseException) -> None:
        try:
            handle.sink(item)
        except Exception:  # a consumer that went away (its event loop closed)
            log.debug("dropped a piece for a gone consumer of %s", self.name, exc_info=True)
