"""``edgeroute doctor``: is this device able to serve, and if not, what to fix.

A fleet operator runs it on a device that misbehaves; each check is one row (ok, warn,
error) whose detail says what was found and what to do. Errors are what stops the daemon
from starting or leaks a secret (a corrupt model, a bundle for other experts, an API key
file others can read); warnings are what degrades it (no AVX2, a cloud expert offline:
the local fallback still answers). Exit status 1 when any check is an error.

llama.cpp is probed in a child process: a build tuned for another CPU dies with SIGILL on
import, and the doctor must report that rather than die of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agent.expert_settings import CloudExpertSettings, LocalExpertSettings
from agent.settings import Settings
from cloud_bridge.credentials import key_file_path, resolve_api_key
from cloud_bridge.errors import BridgeConfigError

Status = Literal["ok", "warn", "error"]

LLAMA_PROBE = (
    "import json, llama_cpp as l; print(json.dumps({'version': l.__version__, "
    "'system_info': l.llama_print_system_info().decode('utf-8', 'replace'), "
    "'gpu_offload': bool(l.llama_supports_gpu_offload())}))"
)
X86_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile")
ARM_FEATURES = ("asimd", "asimddp", "fphp", "sve", "i8mm")


@dataclass(frozen=True)
class Finding:
    """One row of the report."""

    check: str
    status: Status
    detail: str


def check_python() -> Finding:
    version = platform.python_version()
    status: Status = "ok" if sys.version_info >= (3, 10) else "error"
    return Finding("python", status, f"{version} at {sys.executable} ({platform.machine()})")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """Flags of the first CPU ('flags' on x86, 'Features' on ARM), lower-case."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            return set(value.lower().split())
    return set()


def check_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Finding:
    machine = platform.machine().lower()
    flags = cpu_features(cpuinfo)
    if machine in {"aarch64", "arm64"}:
        found = [f for f in ARM_FEATURES if f in flags]
        shown = ["neon" if f == "asimd" else f for f in found]
        status: Status = "ok" if "asimd" in flags or not flags else "warn"
        return Finding("cpu", status, f"{machine}: {' '.join(shown) or 'flags unknown'}")
    found = [f for f in X86_FEATURES if f in flags]
    if not flags:
        return Finding("cpu", "warn", f"{machine}: cannot read CPU flags from {cpuinfo}")
    if "avx2" not in flags:
        return Finding("cpu", "warn", f"{machine}: no AVX2 ({' '.join(found) or 'none'}); "
                       "llama.cpp will be slow: rebuild it without -DGGML_AVX2=ON")
    return Finding("cpu", "ok", f"{machine}: {' '.join(found)}")


def check_onnxruntime(needed: bool) -> Finding:
    try:
        import onnxruntime
    except ImportError as exc:
        status: Status = "error" if needed else "warn"
        return Finding("onnxruntime", status, f"not importable ({exc}); pip install onnxruntime "
                       "(onnxruntime-gpu on a Jetson, see packaging/jetson.md)")
    providers = ", ".join(onnxruntime.get_available_providers())
    return Finding("onnxruntime", "ok", f"{onnxruntime.__version__}; providers: {providers}")


def probe_llama(timeout: float = 60.0) -> tuple[dict[str, Any] | None, str]:
    """(build info, error) from importing llama_cpp in a child process."""
    try:
        proc = subprocess.run([sys.executable, "-c", LLAMA_PROBE], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"importing llama_cpp took over {timeout:.0f} s"
    if proc.returncode < 0:
        return None, (f"importing llama_cpp died with signal {-proc.returncode} (SIGILL=4: "
                      "built for another CPU); rebuild it: make setup (portable build)")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"cannot import llama_cpp: {last}; run make setup"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def check_llama(settings: Settings | None, timeout: float = 60.0) -> Finding:
    info, error = probe_llama(timeout)
    if info is None:
        return Finding("llama.cpp", "error", error)
    system = str(info["system_info"])
    backends = [b for b in ("CUDA", "Metal", "Vulkan", "SYCL") if b in system] or ["CPU"]
    simd = [f for f in ("AVX512", "AVX2", "NEON", "FMA") if f"{f} = 1" in system]
    detail = f"{info['version']}; backend {'+'.join(backends)}; {' '.join(simd) or 'no SIMD'}"
    gpu_wanted = settings is not None and any(e.n_gpu_layers for e in settings.local_experts)
    if gpu_wanted and not info["gpu_offload"]:
        return Finding("llama.cpp", "warn", detail + "; n_gpu_layers is set but this build has "
                       "no GPU offload: rebuild with LLAMA_CMAKE_ARGS=-DGGML_CUDA=on")
    return Finding("llama.cpp", "ok", detail)


def _builtin_path(expert: LocalExpertSettings, cache_dir: Path) -> tuple[Path | None, str, str]:
    """(file if present, pinned sha256, why absent) for a builtin model: the file the
    daemon would load (``agent.model_files``), never assembled here."""
    from agent.errors import ModelFileError
    from agent.model_files import builtin_file, builtin_model

    try:
        builtin = builtin_model(expert.model)
    except ModelFileError as exc:
        return None, "", str(exc)
    try:
        path = builtin_file(builtin, cache_dir)
    except ModelFileError as exc:  # a package missing or incomplete
        return None, builtin.sha256, str(exc)
    if path.is_file():
        return path, builtin.sha256, ""
    return None, builtin.sha256, "not assembled yet: `edgeroute serve` assembles it on first start"


def _hub_path(expert: LocalExpertSettings, cache_dir: Path) -> Path | Finding:
    """An ``hf:`` model's file in the hub cache (never downloaded here), else the finding:
    an error offline (the daemon cannot start), a warning online (it downloads at start)."""
    from huggingface_hub import constants

    from agent.errors import ModelFileError, NotInHubCacheError
    from agent.hub_models import fetch
    from agent.model_refs import parse_ref

    try:
        return fetch(parse_ref(expert.model), cache_dir, local_only=True)
    except ModelFileError as exc:
        if constants.HF_HUB_OFFLINE or not isinstance(exc, NotInHubCacheError):
            return Finding(f"model {expert.name}", "error", str(exc))
        return Finding(f"model {expert.name}", "warn", f"{exc}; `edgeroute serve` downloads "
                       "it on first start")


def check_model(expert: LocalExpertSettings, cache_dir: Path, rehash: bool) -> Finding:
    from agent.errors import ModelFileError
    from agent.file_digest import sha256_file
    from agent.hub_models import verified_stamp
    from agent.model_files import verify_file
    from agent.model_refs import is_builtin, is_hub_ref

    name = f"model {expert.name}"
    stamp = None
    if is_builtin(expert.model):
        path, pinned, why = _builtin_path(expert, cache_dir)
        if path is None:
            return Finding(name, "warn" if pinned and "assembles" in why else "error", why)
    elif is_hub_ref(expert.model):
        found = _hub_path(expert, cache_dir)
        if isinstance(found, Finding):
            return found
        path, pinned, stamp = found, expert.sha256 or "", verified_stamp(found, cache_dir)
    else:
        path, pinned = Path(expert.model).expanduser(), (expert.sha256 or "")
    try:
        verify_file(path, None)  # exists, readable, GGUF magic
        actual = sha256_file(path) if rehash or not pinned else None
        if pinned and actual is None:
            verify_file(path, pinned, stamp=stamp)  # trusts a fresh stamp of the last check
    except ModelFileError as exc:
        return Finding(name, "error", str(exc))
    size = f"{path.stat().st_size / 1e6:.0f} MB"
    if not pinned:
        return Finding(name, "warn", f"{path} ({size}) sha256 {actual} is not pinned; set "
                       f"this expert's sha256 to it so a corrupt copy is refused")
    if actual is not None and actual != pinned.lower():
        return Finding(name, "error", f"{path} has sha256 {actual}, expected {pinned}; the file "
                       "is corrupt or not the pinned model: replace it or fix 'sha256'")
    return Finding(name, "ok", f"{path} ({size}) sha256 {pinned[:16]}... verified")


def check_threads(settings: Settings) -> Finding:
    """The CPU threads generation and routing get, and where the default came from."""
    from agent.cores import generation_threads, physical_cores

    cores = physical_cores()
    parts = []
    for e in settings.local_experts:
        chosen = generation_threads(e.n_threads)
        parts.append(f"{e.name} {chosen.threads}" + ("" if e.n_threads else " (default)"))
    status: Status = "ok"
    detail = (f"generation threads: {', '.join(parts)}; default = {cores.how}; router: "
              f"{settings.router.threads} onnxruntime threads, only while routing")
    over = [e.name for e in settings.local_experts if (e.n_threads or 0) > cores.threads]
    if over:
        status = "warn"
        detail += (f"; {', '.join(over)} set more threads than the {cores.threads} physical "
                   "cores: generation slows down; unset n_threads")
    return Finding("threads", status, detail)


def check_bundle(settings: Settings) -> Finding:
    """The router the daemon would run, loaded as it loads it: for an ability-profile
    bundle, where each configured expert's profile comes from (a prior is a warning)."""
    from agent import router_bundle
    from agent.errors import AgentError

    bundle = settings.router.bundle
    if bundle is not None and str(bundle).lower() == "none":
        return Finding("router bundle", "ok", "router.bundle=none: every query goes to "
                       f"{settings.default_expert()}")
    path = Path(bundle) if bundle is not None else router_bundle.embedded_bundle()
    if path is None:
        return Finding("router bundle", "warn", "no bundle installed: every query goes to "
                       f"{settings.default_expert()}")
    try:
        from agent.profile_router import open_bundle

        described = open_bundle(path, settings, settings.router.threads).describe()
    except AgentError as exc:
        return Finding("router bundle", "error", str(exc))
    if described["mode"] != "profile":
        return Finding("router bundle", "ok", f"{path}: experts {described['experts']}, "
                       "all file hashes match")
    experts = described["experts"]
    parts = [f"{n}: {e['profile_source']} {e['profile']!r}" for n, e in experts.items()]
    prior = [n for n, e in experts.items() if e["profile_source"] == "prior"]
    hint = (f"; calibrate {', '.join(prior)} (`edgeroute experts calibrate NAME`)"
            if prior else "")
    return Finding("router bundle", "warn" if prior else "ok",
                   f"{path}: profiles {'; '.join(parts)}{hint}")


def check_secret(label: str, path: Path) -> Finding:
    """A key or token file must exist and be readable by its owner only."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return Finding(label, "error", f"{path}: {exc.strerror}; create it (chmod 600) or "
                       "load it with systemd LoadCredential=")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Finding(label, "error", f"{path} has mode {stat.filemode(mode)}: group/others "
                       f"can read the secret; run chmod 600 {path}")
    return Finding(label, "ok", f"{path} mode {stat.filemode(mode)}")


def secret_checks(settings: Settings) -> list[Finding]:
    """Every secret file the settings name: cloud API keys and the server's token."""
    named = [(f"secret {e.name}", e.api_key_file) for e in settings.cloud_experts]
    named.append(("secret server token", getattr(settings.server, "api_token_file", None)))
    return [check_secret(label, key_file_path(p, os.environ)) for label, p in named
            if p is not None]


def _api_key(expert: CloudExpertSettings) -> str | None:
    """The key the bridge would send (``cloud_bridge.credentials``); None when it has none
    or cannot read it (the secret rows say why)."""
    try:
        key = resolve_api_key(expert.api_key, expert.api_key_file, expert=expert.name)
    except BridgeConfigError:
        return None
    return None if key is None else key.get_secret_value()


def check_cloud(expert: CloudExpertSettings, timeout: float) -> Finding:
    """GET {base_url}/models: reachable, key accepted, model listed, and how fast."""
    import httpx

    name = f"cloud {expert.name}"
    key = _api_key(expert)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = expert.base_url.rstrip("/") + "/models"
    start = time.perf_counter()
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Finding(name, "warn", f"{url} unreachable ({type(exc).__name__}); queries for "
                       "it fall back to the first local expert")
    ms = (time.perf_counter() - start) * 1000
    if resp.status_code in (401, 403):
        return Finding(name, "error", f"{url}: HTTP {resp.status_code} in {ms:.0f} ms: the API "
                       "key is missing or rejected; fix api_key_file")
    if resp.status_code >= 400:
        return Finding(name, "warn", f"{url}: HTTP {resp.status_code} in {ms:.0f} ms")
    try:
        ids = {str(m.get("id")) for m in resp.json().get("data", [])}
    except (ValueError, AttributeError):
        ids = set()
    if ids and expert.model not in ids:
        return Finding(name, "warn", f"{url}: HTTP 200 in {ms:.0f} ms but model "
                       f"{expert.model!r} is not listed ({sorted(ids)[:5]})")
    return Finding(name, "ok", f"{url}: HTTP 200 in {ms:.0f} ms")


def _writable_dir(label: str, path: Path) -> Finding:
    if path.is_dir():
        ok = os.access(path, os.W_OK | os.X_OK)
        return Finding(label, "ok" if ok else "error",
                       f"{path} writable" if ok else f"{path} is not writable by uid "
                       f"{os.getuid()}; chown it or point {label} elsewhere")
    parent = next((p for p in path.parents if p.exists()), Path("/"))
    if os.access(parent, os.W_OK | os.X_OK):
        return Finding(label, "ok", f"{path} absent; will be created (under {parent})")
    return Finding(label, "error", f"{path} absent and {parent} is not writable; create it")


def check_env_files(files: list[Path]) -> list[Finding]:
    """An env file that carries an inline api_key must not be readable by others."""
    out = []
    for path in files:
        if not path.is_file():
            continue
        mode = path.stat().st_mode
        try:
            inline_key = '"api_key"' in path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            out.append(Finding(f"env file {path.name}", "error", f"{path}: {exc.strerror}"))
            continue
        if inline_key and mode & (stat.S_IRWXG | stat.S_IRWXO):
            out.append(Finding(f"env file {path.name}", "error", f"{path} holds an api_key and "
                               f"has mode {stat.filemode(mode)}; move the key to a credential "
                               "file (api_key_file) or chmod 600"))
        else:
            out.append(Finding(f"env file {path.name}", "ok", f"{path} read"))
    return out


def check_variables() -> list[Finding]:
    """One warning per EDGEROUTE_ variable that sets nothing (a typo is otherwise silent)."""
    from agent.envfile import unknown_variables

    return [Finding(f"variable {u.var}", "warn", u.message()) for u in unknown_variables()]


def settings_checks(settings: Settings, rehash: bool, timeout: float) -> list[Finding]:
    from agent.settings import default_env_files

    findings = [
        _writable_dir("paths.data_dir", settings.paths.data_dir),
        _writable_dir("paths.cache_dir", settings.paths.cache_dir),
        *check_env_files(default_env_files()),
        *check_variables(),
    ]
    findings += [check_model(e, settings.paths.cache_dir, rehash) for e in settings.local_experts]
    findings.append(check_threads(settings))
    findings.append(check_bundle(settings))
    findings += secret_checks(settings)
    findings += [check_cloud(e, timeout) for e in settings.cloud_experts]
    if not any(f.status == "error" for f in findings):  # a router that loads, experts that do
        from agent.doctor_routing import routing_rows

        kinds = {e.name: "local" for e in settings.local_experts}
        kinds |= {e.name: "cloud" for e in settings.cloud_experts}
        findings += [Finding(c, s, d) for c, s, d in routing_rows(settings, kinds)]  # type: ignore[arg-type]
    from agent.outcomes import doctor_rows

    findings += [Finding(c, s, d) for c, s, d in doctor_rows(settings)]  # type: ignore[arg-type]
    return findings


def diagnose(rehash: bool = False, timeout: float = 3.0) -> tuple[list[Finding], list[Any]]:
    """Every finding, and each setting's source (empty when the settings don't load)."""
    from pydantic import ValidationError

    from agent.envfile import setting_sources

    settings: Settings | None
    try:
        settings = Settings()
        settings_row = Finding("settings", "ok", "loaded")
    except ValidationError as exc:
        from agent.cli import _one_line

        settings, settings_row = None, Finding("settings", "error", _one_line(exc))
    bundle_needed = settings is not None and str(settings.router.bundle or "none") != "none"
    findings = [check_python(), check_cpu(), check_onnxruntime(bundle_needed),
                check_llama(settings), settings_row]
    if settings is None:
        return findings, []
    findings += settings_checks(settings, rehash, timeout)
    return findings, setting_sources(settings)


def _table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rehash", action="store_true",
                        help="hash every model file again, ignoring verified stamps")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for each cloud expert (default 3)")


def run(args: argparse.Namespace) -> int:
    findings, sources = diagnose(rehash=args.rehash, timeout=args.timeout)
    failed = any(f.status == "error" for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(f) for f in findings],
                          "settings": [asdict(s) for s in sources]}, indent=2))
        return 1 if failed else 0
    print(_table([(f.check, f.status.upper(), f.detail) for f in findings],
                 ("CHECK", "STATUS", "DETAIL")))
    if sources:
        print()
        print(_table([(s.key, _short(s.value), s.source) for s in sources],
                     ("SETTING", "VALUE", "SOURCE")))
    errors = sum(f.status == "error" for f in findings)
    print(f"\n{errors} error(s)" if errors else "\nno errors")
    return 1 if failed else 0
