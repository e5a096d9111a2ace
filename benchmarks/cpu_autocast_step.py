"""CPU seconds of one demo-sized training step in float32 and under CPU bfloat16 autocast, interleaved.

    python benchmarks/cpu_autocast_step.py [--steps N] [--threads T]

The network is the demo's nnU-Net (dynamic-network-architectures' PlainConvUNet as plans/cpu_demo.json gives it:
16-32-64-64 features, 4 stages, InstanceNorm, LeakyReLU), batch 2 of 16x32x32 patches, 14 classes, cross-entropy, SGD
with nnU-Net's momentum. Each round runs one float32 step and one bf16 step (the same network, alternating), and adds
each step's process CPU time (``time.process_time``: user + system of this process, so other processes on a loaded
machine change it little). Prints both sums, their ratio and the CPU's native-bfloat16 flags.
"""
from __future__ import annotations

import argparse
import time

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_poolskip.utilities.cpu_precision import cpu_bf16_flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="rounds (one float32 and one bf16 step each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo trains with 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = PlainConvUNet(1, 4, (16, 32, 64, 64), torch.nn.Conv3d, 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                            (2, 2, 2, 2), 14, (2, 2, 2), conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                            nonlin_kwargs={"inplace": True}, deep_supervision=False)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    data = torch.randn(2, 1, 16, 32, 32)
    target = torch.randint(0, 14, (2, 16, 32, 32))

    def step(bf16: bool) -> None:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(network(data), target)
            loss.backward()
        optimizer.step()

    for bf16 in (False, True, False, True):  # warm-up: oneDNN primitive creation
        step(bf16)
    seconds = {False: 0.0, True: 0.0}
    for _ in range(args.steps):
        for bf16 in (False, True):
            start = time.process_time()
            step(bf16)
            seconds[bf16] += time.process_time() - start
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 flags: "
          f"{' '.join(cpu_bf16_flags()) or 'none'}; {args.steps} steps each, {args.threads} thread(s)")
    print(f"float32 {seconds[False]:.2f} CPU s, bf16 autocast {seconds[True]:.2f} CPU s, "
          f"ratio bf16/float32 {seconds[True] / seconds[False]:.2f}")


if __name__ == "__main__":
    main()
