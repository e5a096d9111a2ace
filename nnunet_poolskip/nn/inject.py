"""Insert Pool Skip into the encoder of dynamic-network-architectures' U-Nets.

Where it goes: in a ``ConvDropoutNormReLU`` block, ``forward`` runs ``all_modules`` only (conv, then
dropout, norm, nonlinearity when present), so the Pool Skip module is inserted into ``all_modules``
right after the conv, i.e. between the conv and its dropout/norm, as the paper places it.

Which convs:
- ``PlainConvUNet``: every conv of every selected encoder stage (2 per stage in nnU-Net's plans).
- ``ResidualEncoderUNet``: the stem (counted as part of stage 0, since it runs at stage 0's
  resolution before it) and every conv of every residual block (``conv1`` and ``conv2`` of each
  ``BasicBlockD``). The 1x1 projections on the residual ``skip`` path are left alone: they are not
  feature-extracting convs of the encoder and the residual path itself already is a skip.
The decoder is never touched (``net.decoder.encoder is net.encoder``, so the decoder sees the same
modified encoder, as it must).

The new inner convs are initialised as the host network initialises its own convs
(nnU-Net: ``InitWeights_He(1e-2)``), since ``get_network_from_plans`` has already run
``network.initialize`` before injection.

Shape of the inner conv and the pool window (the 3D reading of the paper's 2D "3x3 conv, 2x2 pool"):
by default every Pool Skip gets a 3x3x3 conv and a 2x2x2 (``pool_size``) window, whatever the host conv's
kernel. With ``host_shaped=True`` each Pool Skip follows its host conv instead:

- inner conv kernel = the host conv's kernel (nnU-Net: the stage's ``kernel_sizes`` entry, e.g. 1x3x3);
- pool window = ``pool_size`` along the axes where the host kernel is larger than 1, and 1 along the axes
  where it is 1. nnU-Net's planner (``get_pool_and_conv_props``) gives an axis kernel 1 while its spacing
  at that stage is at least twice the finest (thick slices), and then normally does not downsample that
  axis into the next stage either (stride 1 there). So Pool Skip pools along the axes on which the host
  conv treats voxels as neighbours, and leaves the slice axis alone where the host does.

On isotropic stages (kernel 3 along every axis, every 2D configuration) both readings are the same.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

from nnunet_poolskip.nn.pool_skip import POOL_SKIP_CLASSES, VARIANTS, as_int, as_per_axis, is_pool_skip

SUPPORTED_NETWORKS = (PlainConvUNet, ResidualEncoderUNet)
STAGE_CHOICES = ("all", "all_but_last")
_SPATIAL_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def resolve_stages(stages: Union[str, Sequence[int]], n_stages: int) -> List[int]:
    """Turn ``"all"``, ``"all_but_last"`` or a sequence of stage indices into a sorted index list.

    Raises ValueError naming the valid choices for an unknown string, an index outside
    ``0..n_stages-1`` or an empty selection.
    """
    choices = f"one of {STAGE_CHOICES} or a sequence of encoder stage indices in 0..{n_stages - 1}"
    if isinstance(stages, str):
        if stages == "all":
            return list(range(n_stages))
        if stages == "all_but_last":
            if n_stages < 2:
                raise ValueError(f"stages='all_but_last' selects no encoder stage: this network has {n_stages} "
                                 f"encoder stage; use 'all' or [0]")
            return list(range(n_stages - 1))
        raise ValueError(f"stages must be {choices}, got {stages!r}")
    try:
        entries = list(stages)
    except TypeError:
        hint = f"; for one stage write [{stages}]" if isinstance(stages, int) and not isinstance(stages, bool) else ""
        raise ValueError(f"stages must be {choices}, got {stages!r} ({type(stages).__name__}){hint}") from None
    indices = sorted(set(as_int(s, "an encoder stage index") for s in entries))
    if not indices:
        raise ValueError(f"stages selects no encoder stage; use {choices}")
    bad = [s for s in indices if not 0 <= s < n_stages]
    if bad:
        raise ValueError(f"encoder stage index {bad} out of range: this network has {n_stages} encoder stages "
                         f"(valid indices 0..{n_stages - 1}, or {STAGE_CHOICES})")
    return indices


def _host_blocks(network: nn.Module, stage: int) -> List[tuple]:
    """(qualified name, ConvDropoutNormReLU) of the encoder convs of one stage, in data-flow order."""
    encoder = network.encoder
    roots = []
    if stage == 0 and getattr(encoder, "stem", None) is not None:
        roots.append(("encoder.stem", encoder.stem))
    roots.append((f"encoder.stages.{stage}", encoder.stages[stage]))
    found = []
    for root_name, root in roots:
        for name, module in root.named_modules():
            # residual projections live under a block's `skip`: not encoder feature convs
            if isinstance(module, ConvDropoutNormReLU) and "skip" not in name.split("."):
                found.append((f"{root_name}.{name}", module))
    return found


def host_shaped_sizes(host_kernel: Sequence[int], pool_size: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(inner conv kernel, pool window) of a host-shaped Pool Skip for a host conv with ``host_kernel``:
    the host's kernel, and ``pool_size`` along the axes where that kernel is larger than 1 (1 elsewhere)."""
    kernel = tuple(int(k) for k in host_kernel)
    return kernel, tuple(p if k > 1 else 1 for k, p in zip(kernel, pool_size))


def inject_pool_skip(network: nn.Module, stages: Union[str, Sequence[int]] = "all",
                     pool_size: Union[int, Sequence[int]] = 2, variant: str = "full", *,
                     host_shaped: bool = False) -> List[str]:
    """Insert Pool Skip after every encoder conv of the selected stages, in place.

    Args:
        network: a dynamic-network-architectures ``PlainConvUNet`` or ``ResidualEncoderUNet``
            (2D or 3D; the Pool Skip dimensionality follows the conv op).
        stages: ``"all"``, ``"all_but_last"`` (the paper's AMOS setting) or a sequence of encoder stage
            indices (ints or NumPy integers).
        pool_size: max-pool kernel and stride in voxels (int or one per spatial axis).
        variant: one of ``nnunet_poolskip.nn.pool_skip.VARIANTS``.
        host_shaped: give each inner conv its host conv's kernel and pool only along the axes where that
            kernel is larger than 1 (see the module docstring); default: kernel 3 and ``pool_size`` along
            every axis.

    Returns:
        The qualified names of the host convs that now have Pool Skip, in data-flow order,
        e.g. ``"encoder.stages.0.0.convs.0.conv"``.

    Raises:
        ValueError: for an unsupported network type, an invalid stage selection or variant, or a
            network that already contains Pool Skip.
    """
    if not isinstance(network, SUPPORTED_NETWORKS):
        raise ValueError(f"inject_pool_skip supports {', '.join(c.__name__ for c in SUPPORTED_NETWORKS)}; "
                         f"got {type(network).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if any(is_pool_skip(m) for m in network.modules()):
        raise ValueError("this network already has Pool Skip modules; inject into a fresh network")
    selected = resolve_stages(stages, len(network.encoder.stages))
    spatial_dims = _SPATIAL_DIMS[network.encoder.conv_op]
    pool_skip_class = POOL_SKIP_CLASSES[spatial_dims]
    pool_size = as_per_axis(pool_size, spatial_dims, "pool_size")  # checked before anything is inserted
    init = InitWeights_He(1e-2)
    wrapped = []
    for stage in selected:
        for name, block in _host_blocks(network, stage):
            kernel, pool = host_shaped_sizes(block.conv.kernel_size, pool_size) if host_shaped else (3, pool_size)
            pool_skip = pool_skip_class(block.conv.out_channels, pool_size=pool, kernel_size=kernel,
                                        variant=variant)
            pool_skip.apply(init)
            pool_skip.to(device=block.conv.weight.device, dtype=block.conv.weight.dtype)
            block.all_modules.insert(1, pool_skip)
            wrapped.append(f"{name}.conv")
    return wrapped
