"""SIGTERM (systemd's stop) lets an in-flight streaming answer finish, then exits 0.

The real daemon process (``python -m agent serve``) with SmolLM2 as its only expert: a
client streams, the daemon is signalled after the first chunk, and the stream must still
end with ``data: [DONE]`` and the process must exit cleanly within the grace period.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port, wait_http

GRACE_S = 10.0  # cmd_serve's timeout_graceful_shutdown


def _daemon_env(smollm_gguf: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EDGEROUTE_LOCAL_EXPERTS": json.dumps(
            [{"name": "smollm2-135m", "model": str(smollm_gguf), "n_threads": 1, "n_ctx": 512}]
        ),
        "EDGEROUTE_ROUTER__BUNDLE": "none",
        "EDGEROUTE_SERVER__PORT": str(port),
        "EDGEROUTE_SERVER__LOG_LEVEL": "warning",
    })
    return env


def test_sigterm_during_stream_completes_it_and_exits_zero(smollm_gguf: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve"], cwd=REPO,
                            env=_daemon_env(smollm_gguf, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        body = {"model": "auto", "stream": True, "max_tokens": 96, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from 1 to 60, comma separated."}]}
        events: list[str] = []
        after_signal = 0
        signalled_at = None
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                          timeout=30) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line)
                if signalled_at is None:
                    proc.send_signal(signal.SIGTERM)
                    signalled_at = time.monotonic()
                else:
                    after_signal += 1
        assert signalled_at is not None
        assert events[-1] == "data: [DONE]", events[-3:]
        assert after_signal >= 3, f"only {after_signal} events after SIGTERM: not in flight"
        content = "".join(
            json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
            for e in events[:-1] if json.loads(e[6:]).get("choices")
        )
        assert content.strip(), "the stream finished but carried no text"
        rc = proc.wait(timeout=GRACE_S + 5)
        elapsed = time.monotonic() - signalled_at
        # -15: uvicorn re-raised the captured SIGTERM after its graceful shutdown; the
        # serve command must swallow it (a no-op SIGTERM handler before uvicorn.run).
        assert rc == 0, f"exit status {rc}: {proc.stdout.read() if proc.stdout else ''}"
        assert elapsed < GRACE_S + 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
