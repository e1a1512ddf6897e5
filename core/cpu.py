"""What this CPU executes natively: decided from its feature flags, never assumed from its vendor or age.

Low precision only pays on a CPU with instructions for it: bf16 needs AVX512-BF16 or AMX-BF16 on x86 (or the
BF16 extension on Arm); an AVX-512 CPU without them, or an AVX2 one, emulates bf16 by converting to FP32 and
back, which is slower than FP32 itself. int8 runs everywhere, fastest with VNNI (AVX512-VNNI, AVX-VNNI) or
AMX-INT8. The decisions are pure functions of the flag set, so they are tested on any machine.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass

#: x86 flags (as /proc/cpuinfo spells them) that execute bf16 / fp16 / int8 dot products natively.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
AMX_FLAGS = ("amx_bf16", "amx_int8", "amx_tile")
#: Arm (aarch64 "Features") spellings of the same: BF16 and the int8 dot-product instructions.
ARM_BF16_FLAGS = ("bf16",)
ARM_INT8_FLAGS = ("asimddp", "i8mm")


@dataclass(frozen=True)
class CpuCapabilities:
    """The low-precision paths a CPU has in hardware, and the flags that say so."""

    name: str
    bf16: bool  # native bf16 dot products (AVX512-BF16, AMX-BF16, Arm BF16)
    fp16: bool  # native fp16 arithmetic (AVX512-FP16, AMX-FP16)
    int8_dot: bool  # int8 dot-product instructions (VNNI, AMX-INT8, Arm dot product)
    amx: bool
    avx512: bool
    flags: frozenset[str]

    def summary(self) -> str:
        """One line for reports: 'AVX2; no AVX-512, no native bf16, no VNNI, no AMX'."""

        def word(ok: bool, what: str) -> str:
            return what if ok else f"no {what}"

        isa = "AVX-512" if self.avx512 else ("AVX2" if "avx2" in self.flags else platform.machine())
        parts = [word(self.avx512, "AVX-512"), word(self.bf16, "native bf16"), word(self.int8_dot, "VNNI/int8 dot"),
                 word(self.amx, "AMX")]  # fmt: skip
        return f"{isa}; " + ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "bf16": self.bf16, "fp16": self.fp16, "int8_dot": self.int8_dot, "amx": self.amx,
                "avx512": self.avx512, "summary": self.summary()}  # fmt: skip


def capabilities_from_flags(flags: Iterable[str], name: str = "") -> CpuCapabilities:
    """The CPU's native low-precision paths from its flag set (x86 or Arm spellings)."""
    found = frozenset(f.lower() for f in flags)

    def has(names: Iterable[str]) -> bool:
        return any(n in found for n in names)

    return CpuCapabilities(
        name=name,
        bf16=has(BF16_FLAGS) or has(ARM_BF16_FLAGS),
        fp16=has(FP16_FLAGS),
        int8_dot=has(VNNI_FLAGS) or has(ARM_INT8_FLAGS),
        amx=has(AMX_FLAGS),
        avx512=any(f.startswith("avx512") for f in found),
        flags=found,
    )


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo text: x86 writes 'flags', Arm 'Features'; the first CPU is read."""
    name, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name, flags


def torch_capability_flags(capability: str) -> set[str]:
    """What torch.backends.cpu.get_cpu_capability() ('AVX2', 'AVX512', 'DEFAULT', ...) implies, for machines
    without /proc/cpuinfo. It names the vector width only, never bf16 or VNNI, so it never claims them."""
    return {"avx2"} if capability.upper() == "AVX2" else {"avx512f"} if capability.upper() == "AVX512" else set()


def cpu_capabilities() -> CpuCapabilities:
    """This machine's CPU: /proc/cpuinfo where there is one, else PyTorch's vector-width probe."""
    try:
        with open("/proc/cpuinfo") as f:
            name, flags = parse_cpuinfo(f.read())
    except OSError:
        name, flags = "", set()
    if not flags:
        import torch

        flags = torch_capability_flags(torch.backends.cpu.get_cpu_capability())
    return capabilities_from_flags(flags, name or platform.processor() or platform.machine())
