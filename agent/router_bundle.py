"""The daemon's trained router: an ONNX bundle run with onnxruntime and tokenizers only.

A bundle is a directory written by ``edgeroute export``::

    manifest.json   format, experts in label order, metric, max_length, sha256 of each file
    model.onnx      the BERT-Router (int8 by default): logits per expert, label order
    tokenizer.json  the router's fast tokenizer

Why no torch, transformers or optimum here: the daemon runs on devices (a Jetson, a
laptop) where they are gigabytes of install and seconds of import it does not need; the
router is one ONNX graph and one tokenizer file. The bundle is refused, with one line that
says what to do, when a file is missing, a hash fails, or its experts are not the
configured ones: a router that scores other experts than the daemon has cannot route.

``RouterHolder`` makes the router swappable at run time: ``swap()`` loads and checks the
new bundle completely, then replaces the reference in one assignment. A request reads the
reference once, so it is scored by the old router or the new one, never a half-loaded one,
and no request waits for or fails because of a swap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BundleError
from agent.file_digest import sha256_file
from agent.routing import Scoring

log = logging.getLogger("edgeroute.router")

BUNDLE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json")
WARMUP_TEXT = "warm-up query: route me to the right expert"


def embedded_bundle() -> Path | None:
    """The default bundle shipped as package data (``agent/assets/router``), if present."""
    path = Path(str(resources.files("agent") / "assets" / "router"))
    return path if (path / MANIFEST_NAME).is_file() else None


@dataclass(frozen=True)
class BundleManifest:
    """``manifest.json``, one type on both sides: ``edgeroute export`` creates and writes
    it (:meth:`create`, :meth:`write`), the daemon reads it (:meth:`read`). The fields are
    what the daemon checks; ``raw`` is the whole manifest as written, provenance included
    (quantization, evaluation figures, versions)."""

    path: Path  # the manifest file; its folder is the bundle
    experts: tuple[str, ...]  # label order
    metric: str
    max_length: int
    files: dict[str, str]  # file name -> sha256
    raw: dict[str, Any]

    @classmethod
    def create(cls, bundle: Path, *, experts: Sequence[str], metric: str, max_length: int,
               provenance: dict[str, Any]) -> BundleManifest:
        """The manifest of the files now in ``bundle`` (each hashed), checked as the daemon
        will check it; ``provenance`` is kept as given."""
        bundle = Path(bundle)
        files = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                 for f in sorted(bundle.iterdir()) if f.name != MANIFEST_NAME}
        raw = {**provenance, "format": BUNDLE_FORMAT, "experts": list(experts),
               "metric": metric, "max_length": int(max_length), "files": files}
        return cls._parse(bundle / MANIFEST_NAME, raw)

    def write(self) -> None:
        text = json.dumps(self.raw, indent=2, sort_keys=True) + "\n"
        self.path.write_text(text, encoding="utf-8")

    @classmethod
    def read(cls, bundle: Path) -> BundleManifest:
        path = Path(bundle) / MANIFEST_NAME
        if not Path(bundle).is_dir():
            raise BundleError(f"router bundle {bundle} is not a directory; "
                              "build one with `edgeroute export` or set router.bundle=none")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BundleError(f"router bundle {bundle} has no {MANIFEST_NAME}; "
                              "re-export it with `edgeroute export`") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: unreadable manifest ({exc}); re-export the bundle") from exc
        return cls._parse(path, raw)

    @classmethod
    def _parse(cls, path: Path, raw: Any) -> BundleManifest:
        if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise BundleError(f"{path}: bundle format {got!r} is not {BUNDLE_FORMAT}; "
                              "re-export the router with this edgeroute version")
        try:
            experts = tuple(str(e) for e in raw["experts"])
            files = {str(k): str(v["sha256"]) for k, v in raw["files"].items()}
            max_length = int(raw["max_length"])
            metric = str(raw["metric"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: manifest lacks or mangles {exc}; re-export the bundle"
                              ) from exc
        missing = [f for f in REQUIRED_FILES if f not in files]
        if missing or not experts or max_length < 2:
            raise BundleError(f"{path}: manifest lists no experts, a max_length < 2, or no "
                              f"hash for {missing}; re-export the bundle")
        return cls(path, experts, metric, max_length, files, raw)

    def verify(self) -> None:
        """Every listed file exists and matches its sha256."""
        root = self.path.parent
        for name, expected in self.files.items():
            target = root / name
            if not target.is_file():
                raise BundleError(f"router bundle {root}: file {name} is missing; "
                                  "re-export or re-install the bundle")
            actual = sha256_file(target)
            if actual != expected:
                raise BundleError(f"router bundle {root}: {name} sha256 {actual[:12]}... does "
                                  f"not match the manifest's {expected[:12]}...; the file is "
                                  "corrupt or was changed: re-export the bundle")

    def check_experts(self, expected: Sequence[str]) -> None:
        want, have = set(expected), set(self.experts)
        if want != have:
            raise BundleError(
                f"router bundle {self.path.parent} scores experts {sorted(have)} but the "
                f"daemon has {sorted(want)} (missing from bundle: {sorted(want - have)}, "
                f"unknown: {sorted(have - want)}); train and export a router for these "
                "experts or change the configured experts"
            )


class OnnxScorer:
    """Tokenize one query and run one ONNX session: what export checks and daemon serves.

    No padding (one query, its own length) and truncation to ``max_length``: a fixed
    padded length would cost a 256-token pass for an 18-token question.
    """

    def __init__(self, model: Path, tokenizer: Path, max_length: int, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.threads = threads

    def feeds(self, text: str) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode(text)
        columns = {
            "input_ids": enc.ids,
            "attention_mask": enc.attention_mask,
            "token_type_ids": enc.type_ids,
        }
        return {n: np.asarray([columns[n]], dtype=np.int64) for n in self.input_names}

    def logits(self, text: str) -> np.ndarray:
        out = self.session.run(None, self.feeds(text))[0]
        return np.asarray(out[0], dtype=np.float64)

    def probabilities(self, text: str) -> np.ndarray:
        z = self.logits(text)
        e = np.exp(z - z.max())
        return e / e.sum()


class OnnxRouter:
    """The Router protocol over a verified bundle: softmax of the logits, label order."""

    mode = "onnx"

    def __init__(self, bundle: Path, manifest: BundleManifest, scorer: OnnxScorer) -> None:
        self.bundle = bundle
        self.manifest = manifest
        self.scorer = scorer
        self.experts = manifest.experts
        self.loaded_at = time.time()
        self.lengths: dict[str, Any] = {}  # a classifier knows no answer lengths

    @classmethod
    def load(cls, bundle: Path, expected_experts: list[str], threads: int = 1) -> OnnxRouter:
        """Verify, load and warm up a bundle. Raises BundleError with what to do."""
        bundle = Path(bundle)
        manifest = BundleManifest.read(bundle)
        manifest.check_experts(expected_experts)
        manifest.verify()
        try:
            scorer = OnnxScorer(bundle / "model.onnx", bundle / "tokenizer.json",
                                manifest.max_length, threads)
            router = cls(bundle, manifest, scorer)
            probs = scorer.probabilities(WARMUP_TEXT)  # first run allocates; pay it now
        except BundleError:
            raise
        except Exception as exc:  # onnxruntime/tokenizers raise their own, untyped errors
            raise BundleError(f"router bundle {bundle}: cannot load model or tokenizer "
                              f"({type(exc).__name__}: {exc}); re-export the bundle") from exc
        if probs.shape != (len(manifest.experts),):
            raise BundleError(f"router bundle {bundle}: model gives {probs.shape[0]} scores for "
                              f"{len(manifest.experts)} experts; re-export the bundle")
        return router

    def scores(self, text: str) -> dict[str, float]:
        probs = self.scorer.probabilities(text)
        return {e: float(p) for e, p in zip(self.experts, probs, strict=True)}

    def score(self, text: str) -> Scoring:
        return Scoring(self.scores(text))

    def describe(self) -> dict[str, Any]:
        raw = self.manifest.raw
        return {
            "mode": self.mode,
            "bundle": str(self.bundle),
            "experts": list(self.experts),
            "metric": self.manifest.metric,
            "precision": raw.get("precision"),
            "max_length": self.manifest.max_length,
            "threads": self.scorer.threads,
            "model_sha256": self.manifest.files["model.onnx"],
            "created_at": raw.get("created_at"),
        }


class RouterHolder:
    """The live router behind one reference, swappable without dropping requests.

    ``scores`` reads ``self._router`` once per call, so an in-flight query finishes on the
    router it started with. ``swap`` runs in the caller's thread (call it through
    ``asyncio.to_thread`` from the event loop); swaps are serialised by a lock that scoring
    never takes. A failed swap raises and leaves the old router serving. ``loader`` builds a
    router from a bundle path (a classifier ``OnnxRouter`` or a ``ProfileRouter``), so a
    swap re-reads everything the first load read (device profiles included).
    """

    def __init__(self, router: Any, loader: Callable[[Path], Any], path: Path) -> None:
        self._router = router
        self._loader = loader
        self._path = Path(path)
        self._lock = threading.Lock()
        self.swaps = 0

    @classmethod
    def load(cls, bundle: Path, expected_experts: list[str], threads: int = 1) -> RouterHolder:
        """A classifier bundle that must score exactly ``expected_experts``."""
        def loader(path: Path) -> OnnxRouter:
            return OnnxRouter.load(path, list(expected_experts), threads)

        return cls(loader(Path(bundle)), loader, Path(bundle))

    @property
    def mode(self) -> str:
        return str(self._router.mode)

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(self._router.experts)

    @property
    def current(self) -> Any:
        return self._router

    @property
    def lengths(self) -> Any:
        return self._router.lengths

    def scores(self, text: str) -> dict[str, float]:
        return self._router.scores(text)  # type: ignore[no-any-return]

    def score(self, text: str) -> Scoring:
        """Scores, features and length models, all from the router current at the call."""
        return self._router.score(text)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        return {**self._router.describe(), "swaps": self.swaps}

    def swap(self, bundle: Path | None = None) -> Any:
        """Load ``bundle`` (default: re-read the current path) fully, then switch to it."""
        with self._lock:
            target = Path(bundle) if bundle is not None else self._path
            new = self._loader(target)
            self._router = new  # the one assignment requests can observe
            self._path = target
            self.swaps += 1
        log.info("router bundle swapped to %s", target)
        return new
