"""What one llama.cpp decode step costs as it carries more sequences: the ceiling on what
continuous batching can gain on this machine, and the cost of feeding sequences out of id
order.

Bare ``llama_decode`` calls on Qwen (the daemon's default model file, threads and
per-sequence KV streams, ``kv_unified`` off), one token per sequence per step, on one
non-main thread as in the daemon; sizes interleaved, the order flipped every round.
Prints the median step time, aggregate tokens/s and the ratio to one sequence, then 4
sequences in id order against the same 4 in rotated order (1, 2, 3, 0): llama.cpp puts a
batch into one ubatch only while ids run consecutively (agent/experts/batching.py).

    .venv/bin/python -m bench.decode_steps [--rounds 3] [--sizes 1 2 3 4 6 8] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any


def _step_ms(llama_cpp: Any, ctx: Any, batch: Any, memory: Any, ids: list[int],
             steps: int) -> float:
    for seq in range(max(ids) + 1):
        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
    b = batch.batch
    times = []
    for pos in range(steps):
        for n, seq in enumerate(ids):
            b.token[n], b.pos[n], b.n_seq_id[n] = 100, pos, 1
            b.seq_id[n][0], b.logits[n] = seq, True
        b.n_tokens = len(ids)
        t0 = time.perf_counter()
        if llama_cpp.llama_decode(ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        times.append(time.perf_counter() - t0)
    return statistics.median(times[5:]) * 1000  # the first steps warm caches


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args(argv)
    if 1 not in args.sizes or any(n < 1 for n in args.sizes):
        raise SystemExit("--sizes: positive sequence counts, 1 among them")

    import llama_cpp
    from llama_cpp import Llama, _internals

    from agent.cores import generation_threads
    from agent.experts.batching import N_BATCH, context_params
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import QWEN_DEFAULT, Settings

    settings = Settings()
    qwen = next(e for e in settings.local_experts if e.model == QWEN_DEFAULT)
    threads = generation_threads(qwen.n_threads).threads
    path = assemble_builtin(BUILTINS[QWEN_DEFAULT], settings.paths.cache_dir)
    most = max(max(args.sizes), 4)
    llama = Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
    ctx = _internals.LlamaContext(model=llama._model, params=context_params(most, 512, threads),
                                  verbose=False)  # the engine's context, as the daemon makes it
    batch = _internals.LlamaBatch(n_tokens=N_BATCH, embd=0, n_seq_max=1, verbose=False)
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    runs: dict[str, list[float]] = {}
    cases = [(str(n), list(range(n))) for n in args.sizes]
    cases += [("4 in order", [0, 1, 2, 3]), ("4 rotated", [1, 2, 3, 0])]

    def body() -> None:  # a non-main thread, as the daemon's DecodeThread
        for r in range(args.rounds):
            for name, ids in (cases if r % 2 == 0 else cases[::-1]):
                runs.setdefault(name, []).append(
                    _step_ms(llama_cpp, ctx, batch, memory, ids, args.steps))
                print(f"  round {r + 1}/{args.rounds}: {name} sequences "
                      f"{runs[name][-1]:.1f} ms", flush=True)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    batch.close()
    ctx.close()
    one = statistics.median(runs["1"])
    print(f"decode steps: Qwen2.5-Coder-0.5B ({path.name}), {threads} threads, a KV stream per "
          f"sequence, {args.steps} steps, median of {args.rounds} interleaved rounds")
    print("| sequences per step | step ms | aggregate tokens/s | vs 1 sequence |")
    print("| ---: | ---: | ---: | ---: |")
    for name, _ in cases[:len(args.sizes)]:
        ms, n = statistics.median(runs[name]), int(name)
        print(f"| {n} | {ms:.1f} | {n * 1000 / ms:.1f} | {n * one / ms:.2f} |")
    ordered, rotated = (statistics.median(runs[k]) for k in ("4 in order", "4 rotated"))
    print(f"4 sequences, ids in order / rotated (1,2,3,0): {ordered:.1f} / {rotated:.1f} ms "
          f"a step (rotated costs {rotated / ordered:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
