"""Is torch's CPU bfloat16 convolution right on this machine? Forward, weight and input gradients against float32.

    python benchmarks/cpu_bf16_conv_check.py [--trials N]

For each convolution below (shapes of nnU-Net's and MONAI V-Net's layers on a demo-sized 16x32x32 patch, and
controls), ``--trials`` random inputs and output gradients: the output and both gradients under
``torch.autocast("cpu", dtype=torch.bfloat16)`` are compared with the same module in float32. Prints, per
convolution, how many trials gave a non-finite gradient and the largest error of the finite ones relative to the
largest float32 value (bfloat16 rounding alone gives about 0.004), then the same for the convolution wrapped by
:func:`nnunet_poolskip.nn.bf16_guard.float32_where_bf16_conv_gradients_fail`, which the project's
trainers apply under CPU bf16 autocast. One thread; a minute or so.
"""
from __future__ import annotations

import argparse
import copy
import platform

import torch

from nnunet_poolskip.nn.bf16_guard import bf16_conv_weight_gradient_unreliable, float32_where_bf16_conv_gradients_fail
from nnunet_poolskip.utilities.cpu_precision import cpu_bf16_flags

CASES = [
    ("nnU-Net demo, deepest stage: 3x3x3 on 4x4x4, 64 ch", lambda: torch.nn.Conv3d(64, 64, 3, padding=1),
     (2, 64, 4, 4, 4)),
    ("nnU-Net demo, stage 3: 3x3x3 on 4x8x8, 64 ch", lambda: torch.nn.Conv3d(64, 64, 3, padding=1), (2, 64, 4, 8, 8)),
    ("3x3x3 on 2x4x4, 64 ch (a stride-2 last stage)", lambda: torch.nn.Conv3d(64, 64, 3, padding=1), (2, 64, 2, 4, 4)),
    ("V-Net down_tr64: 5x5x5 on 4x8x8, 16 ch", lambda: torch.nn.Conv3d(16, 16, 5, padding=2), (2, 16, 4, 8, 8)),
    ("V-Net down_tr128: 5x5x5 on 2x4x4, 32 ch", lambda: torch.nn.Conv3d(32, 32, 5, padding=2), (2, 32, 2, 4, 4)),
    ("5x5x5 on 8x4x4, 16 ch (thin in-plane only)", lambda: torch.nn.Conv3d(16, 16, 5, padding=2), (2, 16, 8, 4, 4)),
    ("5x5x5 on 4x8x8, 8 ch (few channels)", lambda: torch.nn.Conv3d(8, 8, 5, padding=2), (2, 8, 4, 8, 8)),
    ("transposed 3x3x3 on 2x4x4, 64 ch", lambda: torch.nn.ConvTranspose3d(64, 32, 3, padding=1), (2, 64, 2, 4, 4)),
    ("transposed 2x2x2 stride 2 on 2x4x4, 64 ch", lambda: torch.nn.ConvTranspose3d(64, 32, 2, stride=2),
     (2, 64, 2, 4, 4)),
    ("2D 3x3 on 2x8, 64 ch", lambda: torch.nn.Conv2d(64, 64, 3, padding=1), (2, 64, 2, 8)),
]


def errors(module: torch.nn.Module, shape, trials: int):
    """(trials with a non-finite value, worst relative error of forward, weight gradient, input gradient)."""
    bad, worst = 0, [0.0, 0.0, 0.0]
    for _ in range(trials):
        x = torch.randn(shape)
        module.zero_grad(set_to_none=True)
        xb = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(xb)
        grad = torch.randn(out.shape)
        out.backward(grad.to(out.dtype))
        got = (out.detach().float(), module.weight.grad.clone(), xb.grad.clone())
        module.zero_grad(set_to_none=True)
        xf = x.clone().requires_grad_()
        reference = module(xf)
        reference.backward(grad)
        expected = (reference.detach(), module.weight.grad, xf.grad)
        if not all(torch.isfinite(g).all() for g in got):
            bad += 1
            continue
        for i, (g, e) in enumerate(zip(got, expected)):
            worst[i] = max(worst[i], ((g - e).abs().max() / e.abs().max()).item())
    return bad, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="random inputs per convolution (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, native bf16 flags: "
          f"{' '.join(cpu_bf16_flags()) or 'none'}; torch {torch.__version__}; {args.trials} trials per row")
    print("| convolution | input (N, C, D, H, W) | rule says unreliable | as torch computes it: non-finite trials, "
          "worst error forward / weight grad / input grad | wrapped: non-finite trials, worst weight-grad error |")
    print("|---|---|:---:|---|---|")
    for name, make, shape in CASES:
        module = make()
        bad, worst = errors(module, shape, args.trials)
        wrapped = copy.deepcopy(module)
        float32_where_bf16_conv_gradients_fail(wrapped)
        bad_wrapped, worst_wrapped = errors(wrapped, shape, args.trials)
        rule = bf16_conv_weight_gradient_unreliable(shape[2:], module.kernel_size)
        print(f"| {name} | {tuple(shape)} | {'yes' if rule else 'no'} | {bad}/{args.trials}, "
              f"{worst[0]:.2g} / {worst[1]:.2g} / {worst[2]:.2g} | {bad_wrapped}/{args.trials}, "
              f"{worst_wrapped[1]:.2g} |", flush=True)


if __name__ == "__main__":
    main()
