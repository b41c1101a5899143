"""Build the wheel, install it into a fresh venv, and serve one query from it.

Why: the editable checkout hides packaging mistakes (a module or package-data file left
out of the wheel, a console script pointing nowhere). This installs the built wheel with
``--no-deps`` into ``build/wheel-venv`` and lets that venv see the project venv's
dependencies through a ``.pth`` line, so llama-cpp-python (minutes to compile) is not
rebuilt; the editable ``edgeroute`` of the project venv stays invisible, because ``.pth``
files inside a directory added by a ``.pth`` line are not processed. Then
``edgeroute serve`` runs from that venv, outside the checkout, with SmolLM2 as its only
expert, and ``/health`` and ``/predict`` must answer.

Run by ``make wheel-check`` and by tests/packaging/test_wheel.py. Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_wheel(dist: Path) -> Path:
    """``pip wheel`` without build isolation: the project venv's setuptools, no network."""
    for stale in (REPO / "build" / "lib", *(REPO / "build").glob("bdist.*"), dist):
        shutil.rmtree(stale, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(REPO)], check=True)
    (wheel,) = dist.glob("edgeroute-*.whl")
    return wheel


def make_venv(venv: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel; dependencies come from this interpreter's."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    deps = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "_edgeroute_project_deps.pth").write_text(deps + "\n")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _smollm_expert() -> dict[str, object]:
    from agent.model_files import BUILTINS, assemble_builtin
    from agent.settings import SMOLLM2_DEFAULT

    path = assemble_builtin(BUILTINS[SMOLLM2_DEFAULT], Path(tempfile.gettempdir()))
    return {"name": "smollm2-135m", "model": str(path), "n_threads": 1, "n_ctx": 512,
            "sha256": BUILTINS[SMOLLM2_DEFAULT].sha256}


def _wait_health(url: str, proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"edgeroute serve exited with {proc.returncode}:\n{out}")
        try:
            resp = httpx.get(url, timeout=1.0)
            if resp.status_code == 200:
                return dict(resp.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def smoke_serve(venv: Path, work: Path) -> dict[str, object]:
    """Run the venv's ``edgeroute serve`` from ``work``; return /health and /predict."""
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEROUTE_")}
    env.update({
        "EDGEROUTE_ENV_FILES": "",
        "EDGEROUTE_LOCAL_EXPERTS": json.dumps([_smollm_expert()]),
        "EDGEROUTE_ROUTER__BUNDLE": "none",
        "EDGEROUTE_SERVER__PORT": str(port),
        "EDGEROUTE_PATHS__DATA_DIR": str(work / "data"),
        "EDGEROUTE_PATHS__CACHE_DIR": str(work / "cache"),
        "EDGEROUTE_PATHS__CONFIG_DIR": str(work / "config"),
    })
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import agent; print(agent.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    if not where.stdout.startswith(str(venv)):
        raise RuntimeError(f"the venv imports agent from {where.stdout.strip()}, not the wheel")
    proc = subprocess.Popen([str(venv / "bin" / "edgeroute"), "serve"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = _wait_health(f"http://127.0.0.1:{port}/health", proc, timeout=60)
        body = {"model": "auto", "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}]}
        resp = httpx.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=60)
        resp.raise_for_status()
        return {"agent_file": where.stdout.strip(), "health": health, "predict": resp.json()}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / "build" / "wheel-venv")
    parser.add_argument("--dist", type=Path, default=REPO / "dist")
    args = parser.parse_args(argv)
    wheel = build_wheel(args.dist)
    venv = make_venv(args.venv, wheel)
    with tempfile.TemporaryDirectory(prefix="edgeroute-wheel-") as tmp:
        result = smoke_serve(venv.parent.parent, Path(tmp))
    answer = result["predict"]
    print(json.dumps({"wheel": wheel.name, **result}, indent=2))
    if not isinstance(answer, dict) or not answer.get("choices"):
        print(f"wheel-check: /predict returned no choices: {answer}", file=sys.stderr)
        return 1
    print(f"wheel-check: {wheel.name} serves /health and /predict from {args.venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
