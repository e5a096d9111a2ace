"""CPU mixed precision (bfloat16 autocast) for training and prediction, opt-in.

nnU-Net trains and predicts under autocast on CUDA only; on the CPU it runs in float32. This project's trainers
and ``nnunet-poolskip predict`` can run their forward passes (and, in training, the backward pass) under
``torch.autocast("cpu", dtype=torch.bfloat16)``:

    NNUNET_POOLSKIP_CPU_AUTOCAST   ``bf16``: CPU bfloat16 autocast; unset, empty or ``off``: float32 (nnU-Net's)

It only acts on the CPU: on CUDA nnU-Net's own fp16 autocast stays as it is.

Whether it pays depends on the CPU. With native bfloat16 instructions (``avx512_bf16`` or AMX ``amx_bf16`` in
``/proc/cpuinfo``: Intel Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later) a demo-sized training step
took 0.55-0.6x the float32 time (benchmarks/RESULTS.md); without them oneDNN emulates bfloat16 and the same step
took 40x longer on an AVX2-only AMD EPYC. ``auto`` (the demo profile) therefore decides by those CPU flags, read
once and printed: a flag check costs nothing and gives the same answer on every run of one machine, where a timed
trial at start-up would cost seconds and, on a shared machine, could flip with the load.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Mapping, Optional, Tuple

CPU_AUTOCAST_VARIABLE = "NNUNET_POOLSKIP_CPU_AUTOCAST"
"""The environment variable that turns CPU bfloat16 autocast on for this project's trainers."""
CPU_AUTOCAST_MODES = ("off", "bf16")
"""The values a run records: float32, or bfloat16 autocast on the CPU."""
CPU_AUTOCAST_CHOICES = ("off", "bf16", "auto")
"""What a user may ask for: ``auto`` is ``bf16`` where the CPU has native bfloat16 instructions, else ``off``."""
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of CPUs that compute bfloat16 natively."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_autocast_from_environment(environ: Optional[Mapping[str, str]] = None) -> str:
    """``bf16`` or ``off``, as ``NNUNET_POOLSKIP_CPU_AUTOCAST`` in ``environ`` (default os.environ) says.

    Unset or empty means ``off``. Raises ValueError naming the variable for any other value (``auto`` too: a
    training is told what to do; :func:`resolve_cpu_autocast` decides ``auto`` before).
    """
    import os

    value = (os.environ if environ is None else environ).get(CPU_AUTOCAST_VARIABLE, "").strip().lower()
    if value in ("", "off"):
        return "off"
    if value == "bf16":
        return "bf16"
    raise ValueError(f"{CPU_AUTOCAST_VARIABLE} must be 'bf16' or 'off' (or unset), got {value!r}")


def cpu_bf16_flags(cpuinfo: Optional[Path] = None) -> Tuple[str, ...]:
    """The native-bfloat16 flags (:data:`BF16_CPU_FLAGS`) that ``cpuinfo`` (default :data:`CPUINFO`) lists; () when
    it has none or cannot be read (not Linux)."""
    try:
        text = (CPUINFO if cpuinfo is None else cpuinfo).read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def resolve_cpu_autocast(requested: str, device: str, cpuinfo: Optional[Path] = None) -> Tuple[str, str]:
    """(mode, reason): what a run on ``device`` does when ``requested`` (``off``, ``bf16`` or ``auto``).

    ``off`` whenever ``device`` is not ``cpu`` (CUDA keeps nnU-Net's own autocast). ``auto``: ``bf16`` when the CPU
    lists a native-bfloat16 flag in ``cpuinfo`` (default :data:`CPUINFO`), else ``off``. The reason is one line for
    the log and run.json.

    Raises:
        ValueError: ``requested`` is not one of :data:`CPU_AUTOCAST_CHOICES`.
    """
    if requested not in CPU_AUTOCAST_CHOICES:
        raise ValueError(f"CPU autocast must be one of {', '.join(CPU_AUTOCAST_CHOICES)}, got {requested!r}")
    if device != "cpu":
        return "off", f"device {device}: CPU autocast does not apply (nnU-Net's own autocast on CUDA)"
    if requested == "off":
        return "off", "float32 (CPU autocast off)"
    flags = cpu_bf16_flags(cpuinfo)
    if requested == "bf16":
        note = f"CPU flags {' '.join(flags)}" if flags else "the CPU lists no native bfloat16 flag: expect it slower"
        return "bf16", f"bfloat16 autocast as asked ({note})"
    if flags:
        return "bf16", f"bfloat16 autocast: auto, the CPU has native bfloat16 ({' '.join(flags)} in /proc/cpuinfo)"
    return "off", ("float32: auto, the CPU lists neither " + " nor ".join(BF16_CPU_FLAGS)
                   + " in /proc/cpuinfo (emulated bfloat16 is slower than float32)")


def cpu_autocast_context(mode: str, device_type: str) -> ContextManager:
    """``torch.autocast("cpu", dtype=torch.bfloat16)`` when ``mode`` is ``bf16`` and ``device_type`` is ``cpu``;
    a context that does nothing otherwise."""
    if mode not in CPU_AUTOCAST_MODES:
        raise ValueError(f"CPU autocast mode must be one of {', '.join(CPU_AUTOCAST_MODES)}, got {mode!r}")
    if mode == "off" or device_type != "cpu":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)
