"""Continuous batching of a local expert (agent/experts/batching.py) on real GGUFs: a
batched request answers exactly as it does alone (temperature 0, and with a seed), joins a
running batch at the next step, stops on its own stop strings and max_tokens, reports its
confidence as the untempered log-probabilities of its tokens, frees its slot when its
client leaves; a request that does not fit its share of the context is a 400; grammar
(JSON) calls take turns with the batch; admission and /metrics count batch slots."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ExpertCallError, RequestError
from agent.expert_settings import LocalExpertSettings
from agent.experts.batching import DecodeThread, TokenLogprob, _Text
from agent.experts.local import LocalExpert
from cloud_bridge.wire import ChatResult, SamplingParams, StreamPiece

PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is the capital of France? Answer in one sentence.",
    "List three colours of the rainbow.",
    "Explain recursion to a child.",
]
GREEDY = SamplingParams(max_tokens=20, temperature=0.0)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def same_answer(a: ChatResult, b: ChatResult) -> bool:
    """The same tokens (text, count, finish) and the same confidence up to float noise: a
    batched step multiplies the weights by 4 columns where a lone one multiplies by 1, and
    llama.cpp's CPU kernels (a 4-column GEMM on repacked weights against a GEMV) sum those
    in another order."""
    assert (a.content, a.finish_reason, a.usage.prompt_tokens, a.usage.completion_tokens) == (
        b.content, b.finish_reason, b.usage.prompt_tokens, b.usage.completion_tokens)
    assert a.confidence is not None and b.confidence is not None
    assert a.confidence.tokens == b.confidence.tokens
    # As far apart as teacher forcing and generation are (tests/export/test_confidence.py).
    assert a.confidence.mean_logprob == pytest.approx(b.confidence.mean_logprob, abs=0.03)
    # Measured apart on Qwen, 4 columns vs 1: mean up to 0.012 since the 4 sequences really
    # decode as one ubatch (0.003 before, when out-of-order ids split them into 4);
    # least token 0.014 and 0.10 (two runs).
    assert a.confidence.min_logprob == pytest.approx(b.confidence.min_logprob, abs=0.25)
    return True


def load(path: Path, **kw: Any) -> LocalExpert:
    cfg = {"n_threads": 2, "n_ctx": 1024, **kw}
    return LocalExpert.load(LocalExpertSettings(name="local", model=str(path), **cfg), path)


@pytest.fixture(scope="module")
def smol(smollm_gguf: Path) -> Iterator[LocalExpert]:
    expert = load(smollm_gguf)
    yield expert
    expert.close()


def wait_idle(expert: LocalExpert, timeout: float = 10.0) -> None:
    assert expert.engine is not None
    deadline = time.monotonic() + timeout
    while expert.engine.stats().active or expert.engine.stats().waiting:
        assert time.monotonic() < deadline, "the engine kept sequences after their requests"
        time.sleep(0.01)


# -- without a model ------------------------------------------------------------------------
def test_text_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    text = _Text(("END",))
    assert text.feed(b"abc E") == "abc "  # "E" may begin END
    assert text.feed(b"N") == ""
    assert text.feed(b"Dxyz") == "" and text.stopped
    other = _Text(("END",))
    assert other.feed(b"ab E") == "ab " and other.flush() == "E"  # no stop: released at the end


def test_text_joins_a_character_split_across_tokens() -> None:
    text = _Text(())
    euro = "€".encode()
    assert text.feed(euro[:1]) == ""
    assert text.feed(euro[1:]) == "€"


class _Recorder:
    """An engine as the decode thread sees it: work for three steps, the first of which
    waits until the test has queued a call."""

    def __init__(self, order: list[str], in_step: threading.Event,
                 go_on: threading.Event) -> None:
        self.order, self.in_step, self.go_on, self.steps = order, in_step, go_on, 0

    def has_work(self) -> bool:
        return self.steps < 3

    def step(self) -> None:
        self.steps += 1
        self.order.append("s")
        if self.steps == 1:
            self.in_step.set()
            self.go_on.wait(5)


def test_a_call_runs_between_two_steps_before_the_next() -> None:
    order: list[str] = []
    in_step, go_on = threading.Event(), threading.Event()
    decode = DecodeThread("test-decode")
    engine = _Recorder(order, in_step, go_on)
    decode.attach(engine)  # type: ignore[arg-type]
    decode.wake()
    assert in_step.wait(5)
    future = decode.call(lambda: order.append("x") or threading.current_thread().name)
    assert order == ["s"]  # the call waits for the running step
    go_on.set()
    assert future.result(5) == "test-decode"  # on the decode thread
    decode.close()
    assert order == ["s", "x", "s", "s"]  # before the next step, not after the batch
    assert decode.run(lambda: 7) == 7  # once stopped, a call runs in place


def test_a_failing_call_raises_in_its_caller() -> None:
    decode = DecodeThread("test-decode")
    with pytest.raises(ZeroDivisionError):
        decode.run(lambda: 1 / 0)
    assert decode.run(lambda: 2) == 2  # the thread lives on
    decode.close()


def test_n_parallel_is_a_setting() -> None:
    cfg = LocalExpertSettings(name="x", model="m.gguf")
    assert cfg.n_parallel == 4 and cfg.n_ctx_per_seq is None
    with pytest.raises(ValueError):
        LocalExpertSettings(name="x", model="m.gguf", n_parallel=0)


# -- same answers -----------------------------------------------------------------------------
# How far apart two decodes of one prompt may be, in nats, per model file. SmolLM2's Q4_1
# kernels compute a column the same way in a batch of four as alone: every token and
# log-probability is equal (measured on 12 prompts x 40 tokens, and the same against
# llama-cpp-python's own create_chat_completion). Qwen2.5-Coder's Q4_K_M weights are repacked
# for a GEMM that takes four columns at once (its activations quantized four rows at a time),
# so on this CPU a batched step's logits differ from a lone step's: measured on 12 prompts
# x 40 greedy tokens, a token's log-probability by up to 0.136 nats (median 0.003) and the
# margin between the two best tokens by up to 0.33 (p99 0.22). A greedy answer can then take
# the other of two tokens that are that close. The bound below is what the tests allow.
NOISE_NATS = {"smollm_gguf": 1e-6, "qwen_gguf": 0.5}


@dataclass
class Trace:
    """One greedy answer as the engine chose it: each step's token and its two best rivals
    (the last step is the end-of-generation token when the answer stopped on one)."""

    steps: list[TokenLogprob]
    text: str


def traced(expert: LocalExpert, prompts: list[str], *, together: bool,
           max_tokens: int = 20) -> list[Trace]:
    """Greedy answers with per-token log-probabilities, one after the other or decoded
    together (submitted on the decode thread between two steps, so they share every step)."""
    engine = expert.engine
    assert engine is not None
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    specs = [replace(expert._spec(chat(p), greedy), top_logprobs=2) for p in prompts]
    sinks: list[queue.SimpleQueue[StreamPiece | BaseException]] = [
        queue.SimpleQueue() for _ in specs]

    def wait(q: queue.SimpleQueue[StreamPiece | BaseException]) -> str:
        parts = []
        while True:
            item = q.get(timeout=120)
            assert isinstance(item, StreamPiece), item
            parts.append(item.content)
            if item.finish_reason is not None:
                return "".join(parts)

    if together:
        handles = expert.decode.run(
            lambda: [engine.submit(s, q.put) for s, q in zip(specs, sinks, strict=True)])
        texts = [wait(q) for q in sinks]
    else:
        handles, texts = [], []
        for s, q in zip(specs, sinks, strict=True):
            handles.append(engine.submit(s, q.put))
            texts.append(wait(q))
    return [Trace(list(h.logprobs), t) for h, t in zip(handles, texts, strict=True)]


def agree_up_to_noise(a: Trace, b: Trace, bound: float) -> int:
    """Assert that two greedy decodes of one prompt agree up to float noise: the same tokens
    with log-probabilities within ``bound`` (and the margin between the two best tokens
    within it), up to the first step where they choose differently; there the two choices
    must be a near tie in both runs (their margins add up to at most ``bound``, since noise
    under ``bound`` can swap only such a pair). Returns where they diverged (len: never)."""
    n = 0
    for x, y in zip(a.steps, b.steps, strict=False):
        if x.token != y.token:
            break
        assert abs(x.logprob - y.logprob) <= bound, (n, x, y)
        if [t for t, _ in x.top] == [t for t, _ in y.top]:
            margin_x, margin_y = x.top[0][1] - x.top[1][1], y.top[0][1] - y.top[1][1]
            assert abs(margin_x - margin_y) <= bound, (n, x, y)
        n += 1
    if n == len(a.steps) == len(b.steps):
        assert a.text == b.text
        return n
    assert n < min(len(a.steps), len(b.steps)), "one answer stopped without a choice"
    x, y = a.steps[n], b.steps[n]
    rival_x, rival_y = dict(x.top).get(y.token), dict(y.top).get(x.token)
    assert rival_x is not None and rival_y is not None, f"step {n}: not a near tie: {x} {y}"
    assert (x.logprob - rival_x) + (y.logprob - rival_y) <= bound, (n, x, y)
    return n


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["smollm_gguf", "qwen_gguf"])
async def test_greedy_batched_answers_equal_alone(model: str, request: pytest.FixtureRequest,
                                                  ) -> None:
    """Four different prompts decoded together give the answers each gives alone (text,
    token count and confidence); where the model's kernels sum a batch in another order
    (Qwen's Q4_K), up to float noise: the same tokens until a near tie (NOISE_NATS)."""
    expert = load(request.getfixturevalue(model))
    bound = NOISE_NATS[model]
    assert expert.engine is not None
    try:
        alone = [await expert.complete(chat(p), GREEDY) for p in PROMPTS]
        assert expert.engine.stats().max_batch_sequences == 1
        batched = await asyncio.gather(*(expert.complete(chat(p), GREEDY) for p in PROMPTS))
        assert expert.engine.stats().max_batch_sequences == 4
        assert all(r.usage.completion_tokens > 0 and r.confidence for r in alone)
        if bound < 1e-3:  # the kernels are batch-invariant: everything is equal
            assert all(same_answer(b, a) for b, a in zip(batched, alone, strict=True))
        # token by token, with the two best rivals of every step
        one_by_one = traced(expert, PROMPTS, together=False)
        together = traced(expert, PROMPTS, together=True)
        for t, one, whole in zip(together, one_by_one, alone, strict=True):
            assert all(s.token == s.top[0][0] for s in t.steps)  # greedy: the best, ranked
            assert one.text == whole.content or bound >= 1e-3
        diverged = [agree_up_to_noise(t, a, bound) for t, a in
                    zip(together, one_by_one, strict=True)]
        assert all(d >= 1 for d in diverged)  # never at the first token of these prompts
    finally:
        expert.close()


@pytest.mark.parametrize("model", ["smollm_gguf", "qwen_gguf"])
def test_greedy_answers_agree_with_llama_cpp_python(model: str,
                                                    request: pytest.FixtureRequest) -> None:
    """The engine's greedy answer is llama-cpp-python's own ``create_chat_completion`` at
    temperature 0, on a context of its own (flash attention on, as the engine's llama.cpp
    default picks on CPU), up to the same float noise: same tokens until a near tie, where
    the reference's logits at that step (a teacher-forced pass) show a near tie too."""
    import numpy as np
    from llama_cpp import Llama

    path = request.getfixturevalue(model)
    bound = NOISE_NATS[model]
    expert = load(path)
    ref = Llama(model_path=str(path), n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
    try:
        assert expert.engine is not None
        ours = traced(expert, PROMPTS, together=False)
        for prompt, mine in zip(PROMPTS, ours, strict=True):
            out = ref.create_chat_completion(messages=chat(prompt), max_tokens=20,
                                             temperature=0.0)
            theirs = out["choices"][0]["message"]["content"]
            if theirs == mine.text:
                continue
            assert bound >= 1e-3, f"{prompt!r}: {theirs!r} != {mine.text!r}"
            # where the texts part: our step there, and the reference's logits at it
            pieces = [expert.engine.piece_text(s.token) for s in mine.steps]
            n = next(i for i in range(len(pieces))
                     if not theirs.startswith("".join(pieces[:i + 1])))
            prefix = list(expert._spec(chat(prompt), GREEDY).prompt) + [
                s.token for s in mine.steps[:n]]
            ref.reset()
            ref.eval(prefix)
            logits = np.asarray(ref.scores[len(prefix) - 1], dtype=np.float64)
            step = mine.steps[n]
            other = int(np.argmax(logits))
            assert other != step.token and other in dict(step.top), (prompt, n, step)
            their_margin = float(logits[other] - logits[step.token])
            assert (step.logprob - dict(step.top)[other]) + their_margin <= bound, (
                prompt, n, step, their_margin)
    finally:
        expert.close()
        ref.close()


@pytest.mark.anyio
async def test_a_request_joins_a_running_batch(smol: LocalExpert) -> None:
    long = replace(GREEDY, max_tokens=40)
    alone_a = await smol.complete(chat(PROMPTS[0]), long)
    alone_b = await smol.complete(chat(PROMPTS[1]), GREEDY)
    assert alone_a.finish_reason == "length"
    stream = smol.stream(chat(PROMPTS[0]), long)
    head = [await stream.__anext__()]  # A is generating
    joined = await smol.complete(chat(PROMPTS[1]), GREEDY)  # B joins, ends before A
    rest = [p async for p in stream]
    assert same_answer(joined, alone_b)
    assert rest and rest[-1].finish_reason == "length"
    assert "".join(p.content for p in head + rest) == alone_a.content
    assert rest[-1].confidence is not None and alone_a.confidence is not None
    assert rest[-1].confidence.mean_logprob == pytest.approx(alone_a.confidence.mean_logprob,
                                                             abs=1e-3)


@pytest.mark.anyio
async def test_a_seed_reproduces_a_sampled_answer_batched_or_alone(smol: LocalExpert) -> None:
    seeded = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95, seed=1234)
    alone = await smol.complete(chat(PROMPTS[3]), seeded)
    batched, *_ = await asyncio.gather(
        smol.complete(chat(PROMPTS[3]), seeded),
        smol.complete(chat(PROMPTS[0]), replace(seeded, seed=5)),
        smol.complete(chat(PROMPTS[1]), replace(seeded, seed=None)),
    )
    assert same_answer(batched, alone)
    others = {(await smol.complete(chat(PROMPTS[3]), replace(seeded, seed=s))).content
              for s in (1, 2, 3)}
    assert others - {alone.content}, "the seed changes nothing: sampling is not seeded"


def test_sync_api_answers_like_the_async_one(smol: LocalExpert) -> None:
    async_answer = asyncio.run(smol.complete(chat(PROMPTS[2]), GREEDY))
    results: list[ChatResult] = []
    threads = [threading.Thread(target=lambda: results.append(
        smol.complete_sync(chat(PROMPTS[2]), GREEDY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(same_answer(r, async_answer) for r in results)


# -- stopping, streaming, confidence -----------------------------------------------------------
@pytest.mark.anyio
async def test_stop_string_and_max_tokens_end_a_sequence(smol: LocalExpert) -> None:
    full = await smol.complete(chat(PROMPTS[0]), replace(GREEDY, max_tokens=30))
    words = full.content.split()
    stop = words[len(words) // 2]
    cut = await smol.complete(chat(PROMPTS[0]), replace(GREEDY, max_tokens=30, stop=(stop,)))
    assert cut.content == full.content[:full.content.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = [p async for p in smol.stream(chat(PROMPTS[0]),
                                              replace(GREEDY, max_tokens=30, stop=(stop,)))]
    assert "".join(p.content for p in streamed) == cut.content
    short = await smol.complete(chat(PROMPTS[0]), replace(GREEDY, max_tokens=5))
    assert (short.finish_reason, short.usage.completion_tokens) == ("length", 5)


@pytest.mark.anyio
async def test_stream_ends_with_usage_and_confidence(smol: LocalExpert) -> None:
    whole = await smol.complete(chat(PROMPTS[1]), GREEDY)
    pieces = [p async for p in smol.stream(chat(PROMPTS[1]), GREEDY)]
    assert all(p.finish_reason is None and p.confidence is None for p in pieces[:-1])
    last = pieces[-1]
    assert "".join(p.content for p in pieces) == whole.content
    assert (last.finish_reason, last.confidence) == (whole.finish_reason, whole.confidence)
    assert last.usage is not None and whole.usage is not None
    assert replace(last.usage, cached_prompt_tokens=0) == replace(whole.usage,
                                                                  cached_prompt_tokens=0)
    # the same prompt again: all but its last token came from the slot's cache
    assert last.usage.cached_prompt_tokens == last.usage.prompt_tokens - 1


def test_confidence_is_the_untempered_log_probability(smol: LocalExpert,
                                                      smollm_gguf: Path) -> None:
    """Mean and min over the generated tokens of log-softmax of the raw logits (not the
    tempered distribution it sampled from), as a teacher-forced pass computes them."""
    import numpy as np
    from llama_cpp import Llama

    assert smol.engine is not None
    params = SamplingParams(max_tokens=16, temperature=0.5, seed=7)
    spec = smol._spec(chat(PROMPTS[3]), params)
    done = threading.Event()
    pieces: list[StreamPiece | BaseException] = []

    def sink(item: StreamPiece | BaseException) -> None:
        pieces.append(item)
        if isinstance(item, BaseException) or item.finish_reason:
            done.set()

    handle = smol.engine.submit(spec, sink)
    assert done.wait(60)
    last = pieces[-1]
    assert isinstance(last, StreamPiece) and last.confidence is not None
    tokens = handle.tokens
    assert last.confidence.tokens == len(tokens) == last.usage.completion_tokens  # type: ignore[union-attr]
    ref = Llama(model_path=str(smollm_gguf), n_ctx=512, n_threads=2, logits_all=True,
                verbose=False)
    try:
        ref.eval(list(spec.prompt) + tokens)
        rows = np.asarray(ref.scores[len(spec.prompt) - 1: len(spec.prompt) + len(tokens) - 1],
                          dtype=np.float64)
    finally:
        ref.close()
    peak = rows.max(axis=1, keepdims=True)
    logz = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    lp = rows[np.arange(len(tokens)), tokens] - logz
    # One pass over prompt + answer vs token-by-token decoding: measured 0.026 apart.
    assert last.confidence.mean_logprob == pytest.approx(lp.mean(), abs=0.05)
    assert last.confidence.min_logprob == pytest.approx(lp.min(), abs=0.2)  # measured 0.13
    tempered = rows / 0.5
    tz = tempered.max(axis=1) + np.log(np.exp(tempered - tempered.max(axis=1,
                                                                       keepdims=True)).sum(axis=1))
    assert abs(last.confidence.mean_logprob - (tempered[np.arange(len(tokens)), tokens]
                                               - tz).mean()) > 0.02


# -- slots, limits, turns -------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_client_that_leaves_frees_its_slot(smol: LocalExpert) -> None:
    alone = await smol.complete(chat(PROMPTS[2]), GREEDY)
    streams = [smol.stream(chat(p), replace(GREEDY, max_tokens=200)) for p in PROMPTS]
    for s in streams:
        await s.__anext__()
    for s in streams:
        await s.aclose()
    wait_idle(smol)
    assert same_answer(await smol.complete(chat(PROMPTS[2]), GREEDY), alone)


@pytest.mark.anyio
async def test_request_over_its_share_of_the_context_is_a_400(smollm_gguf: Path) -> None:
    expert = load(smollm_gguf, n_ctx=512, n_parallel=2, n_ctx_per_seq=128)
    try:
        with pytest.raises(RequestError) as over:
            await expert.complete(chat("Hi"), replace(GREEDY, max_tokens=120))
        assert (over.value.param, over.value.status_code) == ("max_tokens", 400)
        with pytest.raises(RequestError) as long:
            await expert.complete(chat("word " * 200), GREEDY)
        assert long.value.param == "messages"
        ok = await expert.complete(chat("Hi"), replace(GREEDY, max_tokens=8))
        assert ok.usage.completion_tokens > 0
    finally:
        expert.close()
    with pytest.raises(ExpertCallError):
        await expert.complete(chat("Hi"), GREEDY)


@pytest.mark.anyio
async def test_json_mode_takes_turns_with_the_batch(smol: LocalExpert) -> None:
    """A grammar call runs on llama-cpp-python's handler between two steps; the batched
    answers around it are unchanged."""
    alone = [await smol.complete(chat(p), GREEDY) for p in PROMPTS[:3]]
    as_json = replace(GREEDY, max_tokens=40, response_format={"type": "json_object"})
    results = await asyncio.gather(
        smol.complete(chat("Give a JSON object with a key named colour."), as_json),
        *(smol.complete(chat(p), GREEDY) for p in PROMPTS[:3]))
    assert all(same_answer(r, a) for r, a in zip(results[1:], alone, strict=True))
    assert results[0].content.lstrip().startswith("{") and results[0].confidence is None
    if results[0].finish_reason == "stop":
        json.loads(results[0].content)


def test_admission_and_metrics_count_batch_slots(smol: LocalExpert) -> None:
    from agent.metrics import Metrics
    from agent.runtime import build_admission
    from agent.settings import Settings

    admission = build_admission(Settings(router={"bundle": "none"}), {"local": smol})
    assert admission.limits == {"local": 4}
    metrics = Metrics()
    metrics.batches.watch("local", smol.batch_stats)
    assert smol.engine is not None
    wait_idle(smol)
    before = smol.engine.stats().steps
    handle = smol.engine.submit(smol._spec(chat(PROMPTS[0]), replace(GREEDY, max_tokens=200)),
                                lambda item: None)
    deadline = time.monotonic() + 10
    while smol.engine.stats().steps <= before:  # its prompt decoded
        assert time.monotonic() < deadline
        time.sleep(0.002)
    text = metrics.render().decode()
    handle.cancel()
    assert 'edgeroute_local_batch_slots{expert="local"} 4.0' in text
    assert 'edgeroute_local_active_sequences{expert="local"} 1.0' in text
    assert 'edgeroute_local_batch_size{expert="local"} 1.0' in text
    st = smol.engine.stats()
    assert f'edgeroute_local_prompt_tokens_total{{expert="local"}} {float(st.prompt_tokens)}' \
        in text and st.prompt_tokens > 0
    assert (f'edgeroute_local_cached_prompt_tokens_total{{expert="local"}} '
            f'{float(st.cached_prompt_tokens)}') in text
    wait_idle(smol)
    assert 'edgeroute_local_active_sequences{expert="local"} 0.0' in metrics.render().decode()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_local_experts_decode_on_one_shared_thread(smollm_gguf: Path) -> None:
    """Two models on one DecodeThread add one thread and one OpenMP team: llama.cpp keeps a
    team of n_threads - 1 workers for each thread that decodes, and with more of them than
    CPUs libgomp stops spinning at a decode's barriers (batching.py)."""
    def threads() -> int:
        return len(list(Path("/proc/self/task").iterdir()))

    decode = DecodeThread("shared")
    a, b = (LocalExpert.load(LocalExpertSettings(name=name, model=str(smollm_gguf),
                                                 n_threads=2, n_ctx=1024),
                             smollm_gguf, decode=decode) for name in ("a", "b"))
    try:
        before = threads()
        json_mode = replace(GREEDY, max_tokens=8, response_format={"type": "json_object"})

        async def both() -> list[ChatResult]:
            return list(await asyncio.gather(
                a.complete(chat(PROMPTS[0]), GREEDY), b.complete(chat(PROMPTS[1]), GREEDY),
                b.complete(chat("A JSON object, please."), json_mode)))

        answers = asyncio.run(both())
        assert all(r.usage.completion_tokens > 0 for r in answers)
        assert a.decode is b.decode is decode
        # the decode thread and its one OpenMP worker; a thread per model would add 4.
        # asyncio.run's executor threads may take a moment to be gone from /proc.
        deadline = time.monotonic() + 5
        while threads() - before > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads() - before <= 2
    finally:
        a.close()
        b.close()
        decode.close()


# -- the prompt cache ---------------------------------------------------------------------------
def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.anyio
async def test_a_prompt_sharing_a_cached_head_decodes_only_the_rest(smollm_gguf: Path) -> None:
    """One request at a time: the same prompt again reuses all but its last token; another
    prompt reuses the chat template's head they share; a chat's next turn reuses the first
    turn's prompt and answer; the answers are those of an expert without the cache."""
    cached, fresh = load(smollm_gguf), load(smollm_gguf, prompt_cache=False)
    try:
        assert cached.engine is not None and fresh.engine is not None
        turn1 = chat(PROMPTS[0])
        first = await cached.complete(turn1, GREEDY)
        p1 = cached._spec(turn1, GREEDY).prompt
        stats = cached.engine.stats()
        assert (stats.prompt_tokens, stats.cached_prompt_tokens) == (len(p1), 0)

        again = await cached.complete(turn1, GREEDY)
        assert cached.engine.stats().cached_prompt_tokens == len(p1) - 1
        assert again.content == first.content
        assert (first.usage.cached_prompt_tokens, again.usage.cached_prompt_tokens) == (
            0, len(p1) - 1)

        other = chat(PROMPTS[1])
        p2 = cached._spec(other, GREEDY).prompt
        before = cached.engine.stats().cached_prompt_tokens
        answer = await cached.complete(other, GREEDY)
        assert cached.engine.stats().cached_prompt_tokens - before == common_prefix(p1, p2) > 0

        turn2 = [*turn1, {"role": "assistant", "content": first.content},
                 {"role": "user", "content": "Now in one line."}]
        p3 = cached._spec(turn2, GREEDY).prompt
        await cached.complete(turn1, GREEDY)  # the slot holds turn 1 and its answer again
        before = cached.engine.stats().cached_prompt_tokens
        follow_up = await cached.complete(turn2, GREEDY)
        reused = cached.engine.stats().cached_prompt_tokens - before
        assert reused > len(p1) + first.usage.completion_tokens // 2  # the answer's tokens too
        assert reused <= common_prefix(p1, p3) + first.usage.completion_tokens

        for messages, got in ((turn1, first), (other, answer), (turn2, follow_up)):
            assert (await fresh.complete(messages, GREEDY)).content == got.content
        assert fresh.engine.stats().cached_prompt_tokens == 0
    finally:
        cached.close()
        fresh.close()
