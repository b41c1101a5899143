"""Real ``edgeroute serve`` processes of one fleet: each its own data dir and device id,
SmolLM2 as the local expert, the loopback llama.cpp server as the cloud expert, one
PostgreSQL ledger (tests/postgres.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port, wait_http

# USD per 1M tokens: a call reserves 292 tokens ("Hi": the prompt's upper bound 290, plus
# max_tokens 2) and, as the peer streams no usage, settles the same, so $0.00146 a call:
# 34 calls exhaust a $0.05 cap.
PRICE = 5.0
WORST_USD = 292 * PRICE / 1e6


@dataclass
class Daemon:
    device: str
    url: str
    proc: subprocess.Popen
    env: dict[str, str]
    log: Path

    def metric(self, name: str) -> float | None:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def wait_synced(self, timeout_s: float = 60) -> None:
        """Until the daemon's database has every row it wrote (its /metrics gauges)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.metric("edgeroute_ledger_online") == 1
                    and self.metric("edgeroute_ledger_unsynced_rows") == 0):
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.device} did not sync in {timeout_s} s: "
                             f"{self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def fleet_env(root: Path, device: str, ledger_url: str, smollm: Path, cloud_url: str,
              **settings: str) -> dict[str, str]:
    """The environment of one device; ``settings``: more EDGEROUTE_ variables."""
    data = root / device
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEROUTE_ENV_FILES": "",
           "EDGEROUTE_PATHS__DATA_DIR": str(data / "data"),
           "EDGEROUTE_PATHS__CONFIG_DIR": str(data / "config"),
           "EDGEROUTE_LOCAL_EXPERTS": json.dumps([{
               "name": "local", "model": str(smollm), "n_threads": 1, "n_parallel": 2,
               "n_ctx": 512}]),
           "EDGEROUTE_CLOUD_EXPERTS": json.dumps([{
               "name": "cloud", "base_url": cloud_url, "model": "smollm2-cloud",
               "input_usd_per_mtok": PRICE, "output_usd_per_mtok": PRICE, "max_retries": 0,
               # one llama.cpp server answers four daemons' calls in turn on two cores:
               # a slow first token is a queue here, not an outage
               "first_token_timeout_s": 120, "first_byte_timeout_s": 120,
               "breaker_failure_threshold": 100}]),
           "EDGEROUTE_SERVER__MAX_INFLIGHT_CLOUD": "2",
           "EDGEROUTE_ROUTER__BUNDLE": "none",
           "EDGEROUTE_SERVER__MAX_QUEUE_PER_EXPERT": "512",
           "EDGEROUTE_SERVER__QUEUE_TIMEOUT_S": "300",
           "EDGEROUTE_SERVER__LOG_LEVEL": "warning",
           "EDGEROUTE_LEDGER__URL": ledger_url,
           "EDGEROUTE_LEDGER__DEVICE_ID": device,
           "EDGEROUTE_LEDGER__RENEW_S": "1",
           "EDGEROUTE_LEDGER__LEASE_TTL_S": "600",
           "EDGEROUTE_LEDGER__STATEMENT_TIMEOUT_S": "1"}
    env.update({f"EDGEROUTE_{k.upper()}": v for k, v in settings.items()})
    return env


def start_daemon(device: str, env: dict[str, str]) -> Daemon:
    port = free_port()
    log = Path(env["EDGEROUTE_PATHS__DATA_DIR"]).parent / "daemon.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", str(port)],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    return Daemon(device, f"http://127.0.0.1:{port}", proc, env, log)


@contextmanager
def fleet(root: Path, ledger_url: str, smollm: Path, cloud_url: str, n: int,
          **settings: str) -> Iterator[list[Daemon]]:
    """``n`` daemons started together, stopped (SIGTERM: leases returned) at the end."""
    with ExitStack() as stack:
        daemons = []
        for i in range(n):
            d = start_daemon(f"dev{i}", fleet_env(root, f"dev{i}", ledger_url, smollm,
                                                  cloud_url, **settings))
            stack.callback(d.stop)
            daemons.append(d)
        for d in daemons:
            try:
                wait_http(f"{d.url}/health", timeout=180, proc=d.proc)
            except Exception as exc:
                raise AssertionError(f"{d.device}: {d.log.read_text()[-3000:]}") from exc
        yield daemons
