"""llama.cpp's own ``llama-server``, built for the benches from the llama.cpp sources
vendored in the llama-cpp-python sdist of the version the daemon runs, and cached so it
builds once (``<cache_dir>/llama-server/<version>-<flags>/``).

The sdist comes from pip (its cache, else the configured index); the build is cmake's,
only the ``llama-server`` target, with ``-j2``. Two flag sets:

- ``same``: the ISA flags the Makefile builds llama-cpp-python with (portable AVX2 on
  x86_64), so both sides run the same kernels and the comparison is the batching alone;
- ``native``: ``-DGGML_NATIVE=ON``, llama.cpp's own default (on an AVX-512 CPU it uses
  kernels the daemon's portable build does not have).

Anything missing (no compiler, no cmake, no index) makes :func:`server_binary` raise
:class:`ServerUnavailable` with a one-line reason; the bench prints it and goes on.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_VERSION = "0.3.36"  # the Makefile's LLAMA_VERSION
SAME_X86 = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
            "-DGGML_F16C=ON", "-DGGML_BMI2=ON"]  # the Makefile's LLAMA_CMAKE_ARGS
COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
          "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
          "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"]


class ServerUnavailable(Exception):
    """llama-server cannot be had here; the message says why."""


def cmake_flags(flavour: str) -> list[str]:
    if flavour == "native":
        return ["-DGGML_NATIVE=ON"]
    return SAME_X86 if platform.machine() == "x86_64" else []


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise ServerUnavailable(f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} failed "
                                f"(exit {proc.returncode}); see {log}")


def _sdist(dest: Path, log: Path) -> Path:
    found = sorted(dest.glob(f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"))
    if found:
        return found[0]
    _run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_VERSION}",
          "--no-binary", ":all:", "--no-deps", "-d", str(dest)], log)
    found = sorted(dest.glob(f"llama_cpp_python-{LLAMA_VERSION}.tar.gz"))
    if not found:
        raise ServerUnavailable(f"pip gave no llama-cpp-python {LLAMA_VERSION} sdist")
    return found[0]


def server_binary(cache_dir: Path, flavour: str = "same") -> Path:
    """The cached llama-server binary for ``flavour``, built first if missing."""
    flags = cmake_flags(flavour)
    tag = hashlib.sha256(" ".join(COMMON + flags).encode()).hexdigest()[:10]
    root = cache_dir / "llama-server"
    out = root / f"{LLAMA_VERSION}-{flavour}-{tag}"
    binary = out / "llama-server"
    if binary.exists():
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise ServerUnavailable(f"{tool} is not installed")
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"build-{flavour}.log"
    print(f"  building llama-server {LLAMA_VERSION} ({flavour}) once; log: {log}", flush=True)
    sdist = _sdist(root, log)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        src = next(Path(tmp).glob("*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        _run(["cmake", "-S", str(src), "-B", str(build), *COMMON, *flags], log)
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j",
              os.environ.get("BENCH_BUILD_JOBS", "2")], log)
        built = next(build.rglob("llama-server"), None)
        if built is None or not built.is_file():
            raise ServerUnavailable(f"the build made no llama-server binary; see {log}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, binary)
    return binary


def server_command(binary: Path, model: Path, port: int, threads: int, parallel: int,
                   ctx_per_seq: int) -> list[str]:
    """llama-server at the daemon's settings: same model, threads, slots and context per
    slot; continuous batching and its other defaults as they ship."""
    return [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
            "-c", str(parallel * ctx_per_seq), "--no-webui"]
