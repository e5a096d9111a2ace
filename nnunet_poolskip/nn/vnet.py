"""MONAI's V-Net for nnU-Net, and Pool Skip placement in its encoder (pure network code, no nnU-Net).

The network is ``monai.networks.nets.VNet`` (Milletari et al. 2016, MONAI 1.6.1): a full-resolution
stem ``in_tr``, four encoder stages ``down_tr32, down_tr64, down_tr128, down_tr256`` (each a strided
2x2x2 "down-conv" followed by 1, 2, 3 and 2 residual 5x5x5 convs), four decoder stages and ``out_tr``.
Every stride-2 step halves the size, so every spatial size of the input must be divisible by
:data:`PATCH_DIVISOR` = 16 (MONAI does not check it; the decoder's concatenation fails otherwise).

Width. MONAI hard-codes 16 features in the stem (then 32, 64, 128, 256). With ``features_base=16``
(the default) :func:`build_vnet` returns MONAI's own ``VNet``. Any other ``features_base`` f builds
:class:`ScaledVNet`: MONAI's very blocks and forward with f, 2f, 4f, 8f, 16f features, used only to
make CPU test runs affordable (nnU-Net's CPU plans preset sets it; real trainings keep 16).

Input channels. The stem adds its input, repeated ``features_base // in_channels`` times, to its
output, so ``features_base % in_channels == 0`` is required: 1, 2, 4, 8 or 16 channels at full width.

Dropout. ``dropout=True`` keeps MONAI's reference behaviour: Dropout3d(0.5) after the down-conv of
``down_tr128`` and ``down_tr256``, on the input and on the skip of ``up_tr256`` and ``up_tr128``, and
the fixed Dropout3d(0.5) on the skip of ``up_tr64`` and ``up_tr32``. ``dropout=False`` replaces every
dropout module with ``nn.Identity``. Dropout only acts in training mode: in eval mode the network is
deterministic.

Pool Skip placement (:func:`inject_pool_skip_vnet`). In each selected encoder stage, a Pool Skip module
goes right after every conv of that stage, before the conv's batch norm:

    stage 0  down_tr32   down_conv (2x2x2 stride 2), ops.0 (5x5x5)                      2 convs
    stage 1  down_tr64   down_conv, ops.0, ops.1                                        3 convs
    stage 2  down_tr128  down_conv, ops.0, ops.1, ops.2                                 4 convs
    stage 3  down_tr256  down_conv, ops.0, ops.1                                        3 convs

The paper's V-Net setting (the default, stages 0 and 1) therefore adds 5 modules; all four stages add
12. The stem ``in_tr``, the decoder and ``out_tr`` are never touched. The 5x5x5 convs sit in MONAI
``Convolution`` blocks (an ``nn.Sequential`` of ``conv`` then ``adn``, the norm): the module is inserted
between them under the name ``pool_skip``. The down-conv is called directly by
``DownTransition.forward`` before ``bn1``, so it is replaced by ``nn.Sequential(conv=<the down-conv>,
pool_skip=<Pool Skip>)``. Host convs keep their parameters; MONAI initialises V-Net with PyTorch's
default initialisation, and so are the new inner convs (PyTorch's default for ``nn.Conv3d``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple, Union

from monai.networks.nets import VNet
from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition
from torch import nn

from nnunet_poolskip.nn.inject import resolve_stages
from nnunet_poolskip.nn.pool_skip import POOL_SKIP_CLASSES, VARIANTS, is_pool_skip

PATCH_DIVISOR = 16
"""Every spatial size fed to V-Net must be a multiple of this (four stride-2 encoder stages)."""
MONAI_FEATURES_BASE = 16
"""Features of MONAI's V-Net stem; stage s of the encoder has ``16 * 2**(s+1)``."""
VNET_ENCODER_STAGES: Tuple[str, ...] = ("down_tr32", "down_tr64", "down_tr128", "down_tr256")
"""Attribute names of the encoder stages, in order; Pool Skip stage indices refer to this tuple."""
PAPER_POOL_SKIP_STAGES: Tuple[int, ...] = (0, 1)
"""The paper's V-Net setting: Pool Skip in the first two encoder stages only."""
_MONAI_ACT = ("elu", {"inplace": True})
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def supported_input_channels(features_base: int = MONAI_FEATURES_BASE) -> List[int]:
    """The input channel counts V-Net's stem accepts: the divisors of ``features_base``."""
    return [c for c in range(1, features_base + 1) if features_base % c == 0]


def check_input_channels(in_channels: int, features_base: int = MONAI_FEATURES_BASE) -> None:
    """Raise ValueError naming the supported counts unless ``features_base % in_channels == 0``."""
    supported = supported_input_channels(features_base)
    if in_channels not in supported:
        raise ValueError(f"MONAI's V-Net needs {features_base} % input channels == 0 (its stem adds the input, "
                         f"repeated, to {features_base} features); got {in_channels} input channels. "
                         f"Supported input channel counts: {', '.join(map(str, supported))}")


def vnet_patch_size(patch_size: Sequence[int], divisor: int = PATCH_DIVISOR) -> List[int]:
    """Round each axis of ``patch_size`` (voxels) down to a multiple of ``divisor``, never below ``divisor``.

    Down, because nnU-Net's planner chose the patch to fit its memory budget and the median image
    size: rounding up would exceed both (and pad small images more), rounding down only loses a
    little context. Axes below ``divisor`` become ``divisor`` (V-Net cannot run on less).
    """
    sizes = [int(s) for s in patch_size]
    if any(s < 1 for s in sizes):
        raise ValueError(f"patch size must be positive on every axis, got {list(patch_size)}")
    return [max(divisor, s // divisor * divisor) for s in sizes]


class ScaledVNet(VNet):
    """MONAI's ``VNet`` with ``features_base`` stem features instead of 16 (same blocks, same forward).

    ``ScaledVNet(16, ...)`` has exactly MONAI's layout and parameter names; :func:`build_vnet` returns
    MONAI's class itself for 16 and uses this one only for other widths (CPU test plans).
    """

    def __init__(self, features_base: int, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1,
                 act: Union[Tuple[str, dict], str] = _MONAI_ACT, dropout_prob_down: Union[float, None] = 0.5,
                 dropout_prob_up: Tuple[Union[float, None], float] = (0.5, 0.5), dropout_dim: int = 3,
                 bias: bool = False):
        nn.Module.__init__(self)  # VNet.__init__ hard-codes 16; the blocks below mirror it with f
        f = features_base
        self.in_tr = InputTransition(spatial_dims, in_channels, f, act, bias=bias)
        self.down_tr32 = DownTransition(spatial_dims, f, 1, act, bias=bias)
        self.down_tr64 = DownTransition(spatial_dims, 2 * f, 2, act, bias=bias)
        self.down_tr128 = DownTransition(spatial_dims, 4 * f, 3, act, dropout_prob=dropout_prob_down,
                                         dropout_dim=dropout_dim, bias=bias)
        self.down_tr256 = DownTransition(spatial_dims, 8 * f, 2, act, dropout_prob=dropout_prob_down,
                                         dropout_dim=dropout_dim, bias=bias)
        self.up_tr256 = UpTransition(spatial_dims, 16 * f, 16 * f, 2, act, dropout_prob=dropout_prob_up,
                                     dropout_dim=dropout_dim)
        self.up_tr128 = UpTransition(spatial_dims, 16 * f, 8 * f, 2, act, dropout_prob=dropout_prob_up,
                                     dropout_dim=dropout_dim)
        self.up_tr64 = UpTransition(spatial_dims, 8 * f, 4 * f, 1, act, dropout_dim=dropout_dim)
        self.up_tr32 = UpTransition(spatial_dims, 4 * f, 2 * f, 1, act, dropout_dim=dropout_dim)
        self.out_tr = OutputTransition(spatial_dims, 2 * f, out_channels, act, bias=bias)
        self.features_base = f


def remove_dropout(network: nn.Module) -> int:
    """Replace every dropout module inside ``network`` with ``nn.Identity``, in place; return how many."""
    replaced = 0
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, _DROPOUT_TYPES):
                setattr(module, name, nn.Identity())
                replaced += 1
    return replaced


def build_vnet(in_channels: int, out_channels: int, features_base: int = MONAI_FEATURES_BASE,
               dropout: bool = True, spatial_dims: int = 3) -> VNet:
    """MONAI's V-Net returning logits.

    Args:
        in_channels: input channels; must divide ``features_base`` (see :func:`supported_input_channels`).
        out_channels: output channels (nnU-Net: number of segmentation heads, background included).
        features_base: stem features; 16 (default) is MONAI's V-Net itself, other values give
            :class:`ScaledVNet` (for cheap CPU runs).
        dropout: True keeps MONAI's reference dropout (see the module docstring), False removes all of it.
        spatial_dims: only 3 is supported (nnU-Net 3D configurations).

    Raises:
        ValueError: for an unsupported channel count, width or dimensionality, naming what is supported.
    """
    if spatial_dims != 3:
        raise ValueError(f"the V-Net trainers support 3D configurations only (spatial_dims=3), got {spatial_dims}")
    if isinstance(features_base, bool) or not isinstance(features_base, int) or features_base < 1:
        raise ValueError(f"features_base must be a positive int, got {features_base!r}")
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    check_input_channels(in_channels, features_base)
    if features_base == MONAI_FEATURES_BASE:
        network = VNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                       dropout_prob_down=0.5, dropout_prob_up=(0.5, 0.5), dropout_dim=3)
    else:
        network = ScaledVNet(features_base, spatial_dims=3, in_channels=in_channels, out_channels=out_channels)
    if not dropout:
        remove_dropout(network)
    return network


def _insert_after(sequential: nn.Sequential, after: str, name: str, module: nn.Module) -> None:
    """Insert ``module`` as child ``name`` right after child ``after``, keeping every other name."""
    children = list(sequential.named_children())
    for child_name, _ in children:
        delattr(sequential, child_name)
    for child_name, child in children:
        sequential.add_module(child_name, child)
        if child_name == after:
            sequential.add_module(name, module)


def inject_pool_skip_vnet(vnet: nn.Module, stages: Union[str, Sequence[int]] = PAPER_POOL_SKIP_STAGES,
                          pool_size: Union[int, Sequence[int]] = 2, variant: str = "full") -> List[str]:
    """Insert Pool Skip after every conv of the selected V-Net encoder stages, in place.

    Args:
        vnet: a ``monai.networks.nets.VNet`` (or :class:`ScaledVNet`), 3D.
        stages: encoder stage indices into :data:`VNET_ENCODER_STAGES` (default: the paper's (0, 1)),
            or ``"all"`` / ``"all_but_last"``.
        pool_size: max-pool kernel and stride in voxels (int or one per spatial axis).
        variant: one of ``nnunet_poolskip.nn.pool_skip.VARIANTS``.

    Returns:
        The qualified names of the host convs after injection, in data-flow order, e.g.
        ``"down_tr32.down_conv.conv"`` and ``"down_tr32.ops.0.conv_block.conv"``; each one's Pool Skip
        module is its sibling ``pool_skip`` (``"down_tr32.down_conv.pool_skip"``, ...).

    Raises:
        ValueError: for a network that is not a 3D MONAI VNet or already has Pool Skip, an invalid stage
            selection or an unknown variant.
    """
    if not isinstance(vnet, VNet):
        raise ValueError(f"inject_pool_skip_vnet needs a monai.networks.nets.VNet, got {type(vnet).__name__}")
    if any(is_pool_skip(m) for m in vnet.modules()):
        raise ValueError("this V-Net already has Pool Skip modules; inject into a fresh network")
    if not isinstance(vnet.in_tr.conv_block.conv, nn.Conv3d):
        raise ValueError("inject_pool_skip_vnet supports 3D V-Nets only (spatial_dims=3)")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    selected = resolve_stages(stages, len(VNET_ENCODER_STAGES))
    pool_skip_class = POOL_SKIP_CLASSES[3]

    def new_pool_skip(conv: nn.Conv3d) -> nn.Module:
        module = pool_skip_class(conv.out_channels, pool_size=pool_size, variant=variant)
        return module.to(device=conv.weight.device, dtype=conv.weight.dtype)

    wrapped = []
    for stage in selected:
        name = VNET_ENCODER_STAGES[stage]
        transition = getattr(vnet, name)
        down_conv = transition.down_conv
        transition.down_conv = nn.Sequential(OrderedDict(conv=down_conv, pool_skip=new_pool_skip(down_conv)))
        wrapped.append(f"{name}.down_conv.conv")
        for index, lu_conv in enumerate(transition.ops):
            block = lu_conv.conv_block  # MONAI Convolution: Sequential(conv, adn)
            _insert_after(block, "conv", "pool_skip", new_pool_skip(block.conv))
            wrapped.append(f"{name}.ops.{index}.conv_block.conv")
    return wrapped
