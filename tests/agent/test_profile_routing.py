"""Out of the box, any configured expert is routed: a daemon with the default settings plus
one cloud expert (llama-cpp-python's real OpenAI-compatible server on loopback, named like
a shipped profile) sends some of 100 mixed queries to the device and some to the cloud."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.agent.conftest import running_daemon
from tests.conftest import MODEL_CACHE, free_port

DATASETS = ("arc", "gsm8k", "mbpp", "pubmedqa")


def _mixed_queries(n_per: int) -> list[tuple[str, str]]:
    from export.datasets import load_dataset

    out = []
    for ds in DATASETS:
        qs = load_dataset(ds)
        pick = np.random.default_rng(7).choice(len(qs), n_per, replace=False)
        out += [(ds, qs[int(i)].prompt) for i in pick]
    return out


@pytest.mark.slow
def test_40_mixed_queries_go_to_local_and_cloud_experts(
        cloud_server: str, qwen_gguf: Path, smollm_gguf: Path, tmp_path: Path) -> None:
    from agent.settings import QWEN_DEFAULT, SMOLLM2_DEFAULT, Settings

    settings = Settings(  # no router setting: the embedded bundle
        paths={"data_dir": tmp_path / "data", "cache_dir": MODEL_CACHE,
               "config_dir": tmp_path / "cfg"},
        server={"port": free_port()},
        local_experts=[{"name": "qwen2.5-coder-0.5b", "model": QWEN_DEFAULT, "n_threads": 2},
                       {"name": "smollm2-135m", "model": SMOLLM2_DEFAULT, "n_threads": 2}],
        cloud_experts=[{"name": "gpt4", "base_url": cloud_server,
                        "model": "gpt-4-1106-preview", "input_usd_per_mtok": 10.0,
                        "output_usd_per_mtok": 30.0}],
    )
    chosen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with running_daemon(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/health").json()
        assert health["router"]["mode"] == "profile"
        assert health["router"]["experts"]["gpt4"]["profile_source"] == "shipped"
        for ds, prompt in _mixed_queries(10):
            r = client.post("/predict", json={"messages": [{"role": "user", "content": prompt}],
                                              "max_tokens": 4})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["choices"][0]["message"]["content"].strip()
            assert set(body["routing"]["scores"]) == {"qwen2.5-coder-0.5b", "smollm2-135m",
                                                      "gpt4"}
            chosen[ds][body["expert"]] += 1
    total = sum(chosen.values(), collections.Counter())
    assert sum(total.values()) == 40
    assert total["gpt4"] > 0, dict(chosen)
    assert total["qwen2.5-coder-0.5b"] + total["smollm2-135m"] > 0, dict(chosen)
