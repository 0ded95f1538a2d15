"""Named ONNX Runtime int8 schemes and the choice among them for a CPU (``docs/int8-cpu.md``).

ORT runs a QDQ S8S8 graph on x86-64 as U8S8 (its QDQS8ToU8 graph transformer shifts int8 activations to uint8).
Without VNNI its U8S8 kernels multiply with VPMADDUBSW, whose pairwise 16-bit sums saturate when uint8
activations meet large int8 weights (255 * 127 * 2 > 32767); ORT's quantisation guide names two remedies:
7-bit weights (``reduce_range``: 255 * 64 * 2 < 32768) or uint8 weights (U8U8 kernels do not saturate).
This module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from e2rnas.errors import E2RNASError


@dataclass(frozen=True)
class Int8Scheme:
    """Arguments of ORT's ``quantize_static`` that decide which integer kernels run."""

    activation_type: str  # "int8" | "uint8"
    weight_type: str  # "int8" | "uint8"
    reduce_range: bool  # 7-bit weights
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


INT8_SCHEMES: dict[str, Int8Scheme] = {
    "s8s8": Int8Scheme("int8", "int8", False,
                       "ORT's default QDQ format; exact on x86 with VNNI and on ARM, may saturate on x86 without VNNI"),
    "u8s8": Int8Scheme("uint8", "int8", False,
                       "uint8 activations, int8 weights: ORT's fastest x86 path, all convolutions fused into "
                       "QLinearConv; exact with VNNI (32-bit sums), may saturate on x86 without VNNI"),
    "u8s8-reduce-range": Int8Scheme("uint8", "int8", True,
                                    "7-bit weights, so VPMADDUBSW pair sums fit in int16; loses one bit of weight"),
    "u8u8": Int8Scheme("uint8", "uint8", False,
                       "uint8 weights run ORT's U8U8 kernels, which widen to 16 bits first: no saturation, slower"),
}
#: the scheme ``auto`` picks on x86 without VNNI: no saturation and full 8-bit weights; it kept the best top-1
#: agreement on digits at the same latency as the others (docs/int8-cpu.md)
NO_VNNI_SCHEME = "u8u8"
#: the scheme ``auto`` picks on x86 with VNNI: S8S8 left convolutions in float (DQ -> Conv -> Q) and ran 1.7x
#: (DARTS_V2) to 3.4x (embedded shape) slower than U8S8 on a VNNI EPYC (docs/int8-cpu.md, "INT8 vs fp32")
VNNI_SCHEME = "u8s8"
SCHEME_CHOICES = ("auto", *INT8_SCHEMES)


def check_scheme(name: str) -> None:
    if name not in SCHEME_CHOICES:
        raise E2RNASError(f"unknown int8 scheme {name!r}; choose from {', '.join(SCHEME_CHOICES)}")


def choose_int8_scheme(cpu: dict[str, Any]) -> tuple[str, str]:
    """(scheme, reason) for a CPU described by ``e2rnas.deploy_targets.cpu_features.cpu_features``."""
    arch, isa, vnni = cpu.get("arch"), cpu.get("isa"), cpu.get("vnni")
    if arch != "x86_64":
        return "s8s8", f"{arch} CPU: ORT's int8 kernels there do not saturate"
    if vnni:
        return VNNI_SCHEME, (f"x86 {isa} with VNNI: u8 x s8 products accumulate in 32 bits (no saturation) and "
                             "U8S8 fuses every convolution into QLinearConv (S8S8 leaves some in float)")
    if vnni is None:
        return NO_VNNI_SCHEME, "x86 CPU whose VNNI support could not be read: the scheme that cannot saturate"
    return NO_VNNI_SCHEME, (f"x86 {isa} without VNNI: ORT's U8S8 kernels (VPMADDUBSW) can saturate int16 sums "
                            "with 8-bit weights")


def resolve_scheme(name: str, cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scheme to use for ``name`` ("auto" or a scheme name) with the CPU facts and the reason, as recorded."""
    check_scheme(name)
    if cpu is None:
        from e2rnas.deploy_targets.cpu_features import cpu_features

        cpu = cpu_features()
    if name == "auto":
        chosen, reason = choose_int8_scheme(cpu)
        reason = f"auto: {reason}"
    else:
        chosen, reason = name, "asked for explicitly"
    spec = INT8_SCHEMES[chosen]
    return {"scheme": chosen, "scheme_reason": reason, "cpu": cpu, "activation_type": spec.activation_type,
            "weight_type": spec.weight_type, "reduce_range": spec.reduce_range}


def other_schemes(name: str) -> list[str]:
    """The schemes to suggest when ``name`` failed validation."""
    return [s for s in INT8_SCHEMES if s != name]
