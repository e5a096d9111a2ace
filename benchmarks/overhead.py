"""What Pool Skip costs: parameters, FLOPs, activation memory and training-step time, in one run.

Compares, on nnU-Net's 3d_fullres PlainConvUNet for BTCV (6 stages, 32..320 features, 14 classes,
deep supervision), three networks with identical weights where they share parameters:

    baseline         the network nnU-Net trains
    straightforward  + Pool Skip (``full``, pool size 2) after every encoder conv, reference
                     implementation (max_pool3d with indices, max_unpool3d, conv)
    lean             the same Pool Skip network with the memory-lean implementation
                     (nnunet_poolskip.nn.lean_kernels: saves pooled values + int8 argmax offsets)

Per network: parameters; FLOPs of one forward+backward (torch.utils.flop_counter.FlopCounterMode);
bytes of the tensors autograd saves for backward, parameters excluded, each storage counted once
(torch.autograd.graph.saved_tensors_hooks); median time of a full nnU-Net training step (zero_grad,
forward, deep-supervision Dice+CE loss, backward, gradient clipping at 12, SGD with Nesterov momentum
0.99), the networks interleaved repetition by repetition in this one process so that a change of
machine load hits all three alike. With ``--device cuda`` also the peak CUDA memory of a step
(torch.cuda.max_memory_allocated), in fp32 and under autocast (fp16 with a GradScaler, as nnU-Net).
With ``--compile`` the networks run as nnU-Net trains them on CUDA, ``torch.compile(network)`` (default mode;
``--compile-backend`` picks another backend): the first step's time (compilation included), then step time and peak
memory; parameters, FLOPs and saved activations are those of the eager networks and are not repeated. A network that
fails to compile is reported as such and the others still run.

The saved-activation and FLOP ratios do not depend on the input size (everything that dominates scales
with the number of voxels), so a CPU-sized patch gives the ratios of the real one; the real BTCV
patch (48x192x192, batch 2, the plan nnU-Net 2.8.1 derives for BTCV's median spacing 3.0 x 0.76 x
0.76 mm) is the default on CUDA.

    python benchmarks/overhead.py                           # CPU, batch 1, 64x64x64, fp32
    python benchmarks/overhead.py --device cuda             # real BTCV patch, fp32 and autocast
    python benchmarks/overhead.py --device cuda --precision autocast --compile   # as nnU-Net trains on CUDA
    python benchmarks/overhead.py --no-timing --patch 32 64 64   # memory and FLOPs only, fast
    python benchmarks/overhead.py --plans nnUNetPlans.json --configuration 3d_fullres   # your plans
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

# nnU-Net 2.8.1's ExperimentPlanner for BTCV (median spacing 3.0 x 0.76 x 0.76 mm, 13 organs): 3d_fullres
BTCV_ARCH_KWARGS = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2, 2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
BTCV_ARCH_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
BTCV_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")
BTCV_PATCH = (48, 192, 192)
BTCV_BATCH = 2
BTCV_CLASSES = 14  # background + 13 organs
CPU_DEFAULT_PATCH = (64, 64, 64)
CPU_DEFAULT_BATCH = 1
MODEL_NAMES = ("baseline", "straightforward", "lean")


def machine_description(device: torch.device) -> Dict[str, str]:
    """CPU model, cores, threads, torch version, load, and the GPU when one is used."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load average (1, 5, 15 min)": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_networks(arch_class: str, arch_kwargs: dict, requires_import: Sequence[str], input_channels: int,
                   num_classes: int, device: torch.device, seed: int) -> Tuple[Dict[str, nn.Module], int]:
    """Baseline, straightforward and lean networks (the Pool Skip ones are copies of the baseline with
    Pool Skip injected, and have the same weights as each other), and the number of wrapped convs."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    from nnunet_poolskip.nn.inject import inject_pool_skip
    from nnunet_poolskip.nn.pool_skip import set_implementation

    torch.manual_seed(seed)
    baseline = get_network_from_plans(arch_class, arch_kwargs, list(requires_import), input_channels, num_classes,
                                      allow_init=True, deep_supervision=True)
    straightforward = copy.deepcopy(baseline)
    wrapped = inject_pool_skip(straightforward, stages="all", pool_size=2, variant="full")
    lean = copy.deepcopy(straightforward)
    set_implementation(straightforward, "reference")
    set_implementation(lean, "lean")
    return {name: net.to(device) for name, net in
            zip(MODEL_NAMES, (baseline, straightforward, lean))}, len(wrapped)


def deep_supervision_loss(n_outputs: int) -> nn.Module:
    """nnU-Net's training loss for a label map (Dice + CE, deep-supervision weights 1, 1/2, ..., last 0)."""
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / (2 ** i) for i in range(n_outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


class TrainingStep:
    """One nnU-Net training step (as ``nnUNetTrainer.train_step``) for one network."""

    def __init__(self, network: nn.Module, data: torch.Tensor, targets: List[torch.Tensor], loss: nn.Module,
                 autocast: bool):
        self.network, self.data, self.targets, self.loss = network, data, targets, loss
        self.device = data.device
        self.autocast = autocast
        self.optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99,
                                         nesterov=True)
        use_scaler = autocast and self.device.type == "cuda"
        scaler_class = getattr(torch.amp, "GradScaler", None)  # torch >= 2.3; before: torch.cuda.amp
        self.scaler = (scaler_class("cuda") if scaler_class else torch.cuda.amp.GradScaler()) if use_scaler else None

    def forward_loss(self) -> torch.Tensor:
        with torch.autocast(self.device.type, enabled=self.autocast):
            output = self.network(self.data)
            return self.loss(output, self.targets)

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_loss()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return float(loss.detach())


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def count_flops(step: TrainingStep) -> int:
    """FLOPs of forward + loss + backward (FlopCounterMode counts convs, matmuls and their backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    step.network.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        step.forward_loss().backward()
    step.network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _is_parameter_copy(tensor: torch.Tensor, parameter_ids: set) -> bool:
    """True for a dtype cast of a parameter (what autocast hands to a conv): its autograd node is a copy
    whose only input is the parameter's gradient accumulator."""
    node = tensor.grad_fn
    if node is None or type(node).__name__ != "ToCopyBackward0":
        return False
    inputs = [fn for fn, _ in node.next_functions if fn is not None]
    return len(inputs) == 1 and id(getattr(inputs[0], "variable", None)) in parameter_ids


def saved_tensor_bytes(step: TrainingStep) -> Tuple[int, int]:
    """(activation bytes, parameter-copy bytes) of the storages autograd keeps for backward in one
    forward + loss. Parameters themselves are left out; dtype casts of parameters (autocast's
    low-precision weight copies, whose size does not grow with the input) are counted separately;
    every storage is counted once however many saved tensors view it."""
    parameters = list(step.network.parameters())
    parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}
    parameter_ids = {id(p) for p in parameters}
    activations: Dict[int, int] = {}
    copies: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in parameter_storages and storage.nbytes() > 0:
                target = copies if _is_parameter_copy(tensor, parameter_ids) else activations
                target[key] = storage.nbytes()
        return tensor

    step.network.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step.forward_loss()
    loss.backward()
    step.network.zero_grad(set_to_none=True)
    return sum(activations.values()), sum(v for k, v in copies.items() if k not in activations)


def peak_cuda_step_bytes(step: TrainingStep) -> Tuple[int, int, int]:
    """(peak bytes allocated during one step above what was allocated before it, bytes of this network's
    parameters and optimizer state, torch.cuda.max_memory_allocated during the step: everything allocated on the
    device at the peak, other networks' parameters and the input batch included)."""
    torch.cuda.synchronize(step.device)
    step.optimizer.zero_grad(set_to_none=True)
    before = torch.cuda.memory_allocated(step.device)
    torch.cuda.reset_peak_memory_stats(step.device)
    step()
    torch.cuda.synchronize(step.device)
    absolute = torch.cuda.max_memory_allocated(step.device)
    static = sum(p.numel() * p.element_size() for p in step.network.parameters())
    static += sum(t.numel() * t.element_size() for state in step.optimizer.state.values()
                  for t in state.values() if torch.is_tensor(t))
    return absolute - before, static, absolute


def interleaved_step_times(steps: Dict[str, TrainingStep], repeats: int, warmup: int,
                           synchronize: Callable[[], None], progress: bool = True) -> Dict[str, List[float]]:
    """Seconds per training step; every repetition runs each network once, in a rotating order."""
    names = list(steps)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(warmup + repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            synchronize()
            start = time.perf_counter()
            steps[name]()
            synchronize()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
        if progress:
            label = "warm-up" if rep < warmup else f"repetition {rep - warmup + 1}/{repeats}"
            print(f"  {label}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" if rep >= warmup else n for n in names),
                  file=sys.stderr, flush=True)
    return times


def make_batch(batch: int, patch: Sequence[int], strides: Sequence[Sequence[int]], num_classes: int,
               device: torch.device, seed: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """A random image batch and one random label map per deep-supervision output (nnU-Net feeds the
    label map downsampled to every decoder resolution)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn((batch, 1, *patch), generator=generator)
    targets = []
    scale = [1] * len(patch)
    for stride in strides:  # output i has the resolution of encoder stage i
        scale = [s * k for s, k in zip(scale, stride)]
        shape = [p // s for p, s in zip(patch, scale)]
        targets.append(torch.randint(0, num_classes, (batch, 1, *shape), generator=generator).float())
    return data.to(device), [t.to(device) for t in targets[:-1]]


def check_patch(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> None:
    divisor = [math.prod(s[d] for s in strides) for d in range(len(patch))]
    if any(p % d for p, d in zip(patch, divisor)) or any(p < 1 for p in patch):
        raise SystemExit(f"--patch {' '.join(map(str, patch))}: every size must be a positive multiple of the "
                         f"network's total stride {divisor} (voxels per axis)")
    bottleneck = [p // d for p, d in zip(patch, divisor)]
    if math.prod(bottleneck) < 2:
        raise SystemExit(f"--patch {' '.join(map(str, patch))}: the bottleneck would be {bottleneck} voxels; "
                         f"instance norm needs at least 2 (use at least twice the total stride {divisor} "
                         f"on some axis)")


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.3f}" if a is not None and b else "n/a"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def print_table(title: str, rows: Dict[str, Dict[str, float]], columns: Sequence[Tuple[str, str, Callable]],
                missing: str = "n/a") -> None:
    print(f"\n{title}")
    header = "| quantity | " + " | ".join(MODEL_NAMES) + " | straightforward / baseline | lean / baseline " \
                                                         "| lean / straightforward |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for key, label, fmt in columns:
        values = rows[key]
        cells = [fmt(values[name]) if values.get(name) is not None else missing for name in MODEL_NAMES]
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio(values.get('straightforward'), values.get('baseline'))}"
              f" | {ratio(values.get('lean'), values.get('baseline'))} "
              f"| {ratio(values.get('lean'), values.get('straightforward'))} |")


def add_cuda_memory_rows(rows: Dict[str, Dict[str, float]], columns: list, steps: Dict[str, TrainingStep]) -> None:
    peaks = {name: peak_cuda_step_bytes(step) for name, step in steps.items()}
    rows["peak"] = {name: p[0] for name, p in peaks.items()}
    rows["static"] = {name: p[1] for name, p in peaks.items()}
    rows["max_memory_allocated"] = {name: p[2] for name, p in peaks.items()}
    columns += [("peak", "peak CUDA memory of a step above what was allocated before it", human_bytes),
                ("static", "parameters + SGD momentum (CUDA)", human_bytes),
                ("max_memory_allocated", "torch.cuda.max_memory_allocated in the step (all three networks "
                                         "resident)", human_bytes)]


def add_time_rows(rows: Dict[str, Dict[str, float]], columns: list, times: Dict[str, List[float]],
                  repeats: int) -> None:
    rows["time"] = {name: statistics.median(t) for name, t in times.items()}
    rows["time_min"] = {name: min(t) for name, t in times.items()}
    columns += [("time", f"median training step ({repeats} interleaved repetitions)", lambda v: f"{v:.3f} s"),
                ("time_min", "fastest training step", lambda v: f"{v:.3f} s")]


def paired_ratios(times: Dict[str, List[float]]) -> Dict[str, float]:
    """Median over repetitions of the time ratio within a repetition (each repetition runs the three networks back
    to back, so the ratio within one is the least affected by load that changes over the run)."""
    paired = {}
    for numerator, denominator in (("straightforward", "baseline"), ("lean", "baseline"), ("lean", "straightforward")):
        if times.get(numerator) and times.get(denominator):
            paired[f"{numerator}/{denominator}"] = statistics.median(
                a / b for a, b in zip(times[numerator], times[denominator]))
    if paired:
        print("\nmedian of per-repetition time ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in paired.items()))
    return paired


def measure_compiled(networks: Dict[str, nn.Module], data: torch.Tensor, targets: List[torch.Tensor], loss: nn.Module,
                     autocast: bool, args: argparse.Namespace, synchronize: Callable[[], None], on_cuda: bool,
                     label: str) -> dict:
    """Step time and peak memory of the networks under ``torch.compile``; the first step (which compiles) is timed
    on its own. A network that fails to compile is recorded with its error."""
    torch._dynamo.reset()
    steps: Dict[str, TrainingStep] = {}
    result: dict = {"first_step_s": {}, "errors": {}}
    for name, net in networks.items():
        step = TrainingStep(torch.compile(net, backend=args.compile_backend), data, targets, loss, autocast)
        try:
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            result["first_step_s"][name] = time.perf_counter() - start
            steps[name] = step
        except Exception as error:  # report it and go on: a failure to compile is a finding
            result["errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(f"  {name}: torch.compile failed: {result['errors'][name]}", file=sys.stderr)
    rows: Dict[str, Dict[str, float]] = {"first_step_s": result["first_step_s"]}
    columns = [("first_step_s", "first step (compilation included)", lambda v: f"{v:.1f} s")]
    if on_cuda and steps:
        add_cuda_memory_rows(rows, columns, steps)
    times = {}
    if not args.no_timing and steps:
        print(f"\ntiming {label}: {args.warmup} warm-up + {args.repeats} interleaved repetitions", file=sys.stderr)
        times = interleaved_step_times(steps, args.repeats, args.warmup, synchronize)
        add_time_rows(rows, columns, times, args.repeats)
    missing = "failed" if result["errors"] else "n/a"
    print_table(f"## {label}", {k: {n: v.get(n) for n in MODEL_NAMES} for k, v in rows.items()}, columns,
                missing=missing)
    for key, value in rows.items():
        result[key] = value
    if times:
        result["step_times_s"] = {n: [round(x, 4) for x in t] for n, t in times.items()}
        result["median_per_repetition_time_ratio"] = paired_ratios(times)
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"batch size (default {CPU_DEFAULT_BATCH} on CPU, {BTCV_BATCH} on CUDA)")
    parser.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help=f"patch size in voxels (default {CPU_DEFAULT_PATCH} on CPU, BTCV's {BTCV_PATCH} "
                             f"on CUDA); a multiple of the network's total stride")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "autocast"), default=None,
                        help="fp32 and/or autocast (bf16 on CPU, fp16 + GradScaler on CUDA); default fp32 on CPU, "
                             "both on CUDA")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per network (default 7)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (default 1)")
    parser.add_argument("--no-timing", action="store_true", help="parameters, FLOPs and memory only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--plans", default=None,
                        help="an nnUNetPlans.json to take the architecture from instead of the built-in BTCV one")
    parser.add_argument("--configuration", default="3d_fullres", help="configuration in --plans (default 3d_fullres)")
    parser.add_argument("--num-classes", type=int, default=BTCV_CLASSES,
                        help=f"output channels incl. background (default {BTCV_CLASSES}, BTCV)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="run the networks under torch.compile, as nnU-Net trains on CUDA (time and memory only)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor, nnU-Net's; aot_eager compiles fast, for smoke "
                             "runs)")
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be >= 1")
    return args


def architecture_from_args(args: argparse.Namespace) -> Tuple[str, dict, Sequence[str], Tuple[int, ...], int]:
    """(class name, kwargs, kwargs requiring import, plan patch size, plan batch size)."""
    if args.plans is None:
        return BTCV_ARCH_CLASS, BTCV_ARCH_KWARGS, BTCV_REQUIRES_IMPORT, BTCV_PATCH, BTCV_BATCH
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not os.path.isfile(args.plans):
        raise SystemExit(f"--plans {args.plans}: no such file")
    plans = PlansManager(args.plans)
    if args.configuration not in plans.available_configurations:
        raise SystemExit(f"--configuration {args.configuration!r} not in {args.plans}; available: "
                         f"{', '.join(plans.available_configurations)}")
    config = plans.get_configuration(args.configuration)
    if len(config.patch_size) != 3:
        raise SystemExit(f"--configuration {args.configuration!r} is {len(config.patch_size)}D; this benchmark "
                         f"measures 3D configurations (e.g. 3d_fullres)")
    return (config.network_arch_class_name, config.network_arch_init_kwargs,
            config.network_arch_init_kwargs_req_import, tuple(config.patch_size), config.batch_size)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    arch_class, arch_kwargs, requires_import, plan_patch, plan_batch = architecture_from_args(args)
    on_cuda = device.type == "cuda"
    patch = tuple(args.patch) if args.patch else (plan_patch if on_cuda else CPU_DEFAULT_PATCH)
    batch = args.batch or (plan_batch if on_cuda else CPU_DEFAULT_BATCH)
    precisions = args.precision or (["fp32", "autocast"] if on_cuda else ["fp32"])
    strides = arch_kwargs["strides"]
    check_patch(patch, strides)

    networks, n_wrapped = build_networks(arch_class, arch_kwargs, requires_import, 1, args.num_classes, device,
                                         args.seed)
    data, targets = make_batch(batch, patch, strides, args.num_classes, device, args.seed)
    loss = deep_supervision_loss(len(targets))
    synchronize = (lambda: torch.cuda.synchronize(device)) if on_cuda else (lambda: None)

    print("# Pool Skip overhead (benchmarks/overhead.py)")
    print("command: " + " ".join(["python", "benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])]))
    for key, value in machine_description(device).items():
        print(f"{key}: {value}")
    print(f"network: {arch_class.rsplit('.', 1)[-1]} {arch_kwargs['features_per_stage']} features, "
          f"{arch_kwargs['n_stages']} stages, {args.num_classes} classes, deep supervision; Pool Skip (full, "
          f"pool size 2) after all {n_wrapped} encoder convs")
    print(f"input: batch {batch}, patch {'x'.join(map(str, patch))} voxels, device {device}")
    print("The saved-activation and FLOP ratios do not depend on the input size (they scale with the voxels).")

    results: dict = {"machine": machine_description(device), "batch": batch, "patch": list(patch),
                     "device": str(device), "compile": args.compile_backend if args.compile else None,
                     "precisions": {}}
    params = {name: count_parameters(net) for name, net in networks.items()}
    results["parameters"] = params
    for precision in precisions:
        autocast = precision == "autocast"
        label = precision if precision == "fp32" else ("autocast bf16" if not on_cuda else "autocast fp16")
        if args.compile:
            label += f" + torch.compile ({args.compile_backend})"
            results["precisions"][precision] = measure_compiled(networks, data, targets, loss, autocast, args,
                                                                synchronize, on_cuda, label)
            continue
        steps = {name: TrainingStep(net, data, targets, loss, autocast) for name, net in networks.items()}
        rows: Dict[str, Dict[str, float]] = {"parameters": params}
        rows["flops"] = {name: count_flops(step) for name, step in steps.items()}
        saved = {name: saved_tensor_bytes(step) for name, step in steps.items()}
        rows["saved"] = {name: value[0] for name, value in saved.items()}
        columns = [("parameters", "parameters", lambda v: f"{v / 1e6:.2f} M"),
                   ("flops", "FLOPs forward+backward", lambda v: f"{v / 1e9:.1f} G"),
                   ("saved", "activations saved for backward (no parameters)", human_bytes)]
        if autocast:
            rows["saved_parameter_copies"] = {name: value[1] for name, value in saved.items()}
            columns.append(("saved_parameter_copies", "+ low-precision parameter copies saved (autocast)",
                            human_bytes))
        if on_cuda:
            add_cuda_memory_rows(rows, columns, steps)
        if not args.no_timing:
            print(f"\ntiming {precision}: {args.warmup} warm-up + {args.repeats} interleaved repetitions",
                  file=sys.stderr)
            times = interleaved_step_times(steps, args.repeats, args.warmup, synchronize)
            add_time_rows(rows, columns, times, args.repeats)
        print_table(f"## {label}", rows, columns)
        results["precisions"][precision] = {k: v for k, v in rows.items()}
        if not args.no_timing:
            paired = paired_ratios(times)
            results["precisions"][precision]["step_times_s"] = {n: [round(x, 4) for x in t] for n, t in times.items()}
            results["precisions"][precision]["median_per_repetition_time_ratio"] = paired
        print(f"\nissue 8 targets ({label}): saved lean/baseline <= 1.10: "
              f"{rows['saved']['lean'] / rows['saved']['baseline']:.3f}", end="")
        if "time" in rows:
            print(f"; time lean/baseline <= 1.40: {rows['time']['lean'] / rows['time']['baseline']:.3f} "
                  f"(per repetition {paired['lean/baseline']:.3f}); time lean/straightforward <= 1.02: "
                  f"{rows['time']['lean'] / rows['time']['straightforward']:.3f} "
                  f"(per repetition {paired['lean/straightforward']:.3f})")
        else:
            print()
    print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results["load_average_end"] = list(os.getloadavg())
    if args.json:
        from nnunet_poolskip.utilities.atomic import write_json_atomic

        write_json_atomic(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
