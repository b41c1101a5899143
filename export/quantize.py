"""Dynamic int8 quantization of an exported router, with one config per device family.

Dynamic quantization (weights int8 ahead of time, activations quantized per call) needs no
calibration data and keeps the router a single file; a 6-layer MiniLM shrinks ~4x (the
embedding table included, through ``Gather``) and runs ~2-3x faster on a CPU.

Why per-target configs (after optimum's ``AutoQuantizationConfig``): onnxruntime's x86
int8 kernels multiply u8 activations by s8 weights with ``VPMADDUBSW``, whose 16-bit
intermediate sums can saturate on AVX2/AVX-512 CPUs without VNNI; 7-bit weights
(``reduce_range``) avoid it at a small precision cost. ARM64 (a Jetson) and AVX-512 VNNI
have no such overflow, so they keep full 8-bit weights.

``portable`` is for a bundle that ships to all of them (the embedded default): u8 weights
(U8U8), which onnxruntime multiplies without the saturating instruction on every x86 CPU
and natively on ARM64, so it keeps full 8-bit weights instead of paying 7-bit rounding.
Per tensor: on the 3-layer router (600 queries, fp32 vs int8) it flipped 3 near-ties
where 7-bit per-channel flipped 7 and u8 per-channel 4; U8U8 runs ~1.5x slower than U8S8
with VNNI, well inside the latency goals (docs/benchmarks.md).
"""

from __future__ import annotations

import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError

# Linear layers, the embedding table and the attention op when fused: where the weights are.
OPS_TO_QUANTIZE: tuple[str, ...] = ("MatMul", "Gemm", "Gather", "Attention",
                                     "EmbedLayerNormalization")


@dataclass(frozen=True)
class QuantConfig:
    """What ``quantize_dynamic`` is called with; written verbatim into the manifest."""

    target: str
    weight_type: str  # "QInt8" or "QUInt8"
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...] = OPS_TO_QUANTIZE
    mode: str = "dynamic"
    keep_fp32: tuple[str, ...] = ()  # regexes of node names left in fp32

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "op_types": list(self.op_types),
                "keep_fp32": list(self.keep_fp32)}


TARGETS: dict[str, QuantConfig] = {
    "arm64": QuantConfig("arm64", "QInt8", per_channel=True, reduce_range=False),
    "avx2": QuantConfig("avx2", "QInt8", per_channel=True, reduce_range=True),
    "avx512": QuantConfig("avx512", "QInt8", per_channel=True, reduce_range=True),
    "avx512_vnni": QuantConfig("avx512_vnni", "QInt8", per_channel=True, reduce_range=False),
    "portable": QuantConfig("portable", "QUInt8", per_channel=False, reduce_range=False),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def machine_target() -> str:
    """The config for the CPU this runs on (the ``--target`` default)."""
    arch = platform.machine().lower()
    if arch in ("aarch64", "arm64"):
        return "arm64"
    flags = _cpu_flags()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "portable"


def fp32_nodes(src: Path, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes matching ``patterns``: the layers an export keeps in fp32 when
    their int8 rounding costs too much (in BERT, often the FFN output projections)."""
    if not patterns:
        return []
    import onnx

    try:
        regexes = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise ExportError(f"--keep-fp32: bad regular expression ({exc})") from exc
    graph = onnx.load(str(src), load_external_data=False).graph
    names = [n.name for n in graph.node if any(r.search(n.name) for r in regexes)]
    if not names:
        raise ExportError(f"--keep-fp32 {list(patterns)} matches no node of {src}")
    return names


def quantize_model(src: Path, dst: Path, config: QuantConfig) -> None:
    """Write the int8 model ``dst`` from the fp32 model ``src``."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = fp32_nodes(src, config.keep_fp32)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=getattr(QuantType, config.weight_type),
            nodes_to_exclude=exclude,
            # fused graphs carry contrib ops shape inference cannot type: their outputs
            # are fp32 activations
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
        )
    except Exception as exc:  # onnxruntime raises bare Exceptions/ValueErrors here
        raise ExportError(f"int8 quantization of {src} failed ({type(exc).__name__}: {exc})"
                          ) from exc
