"""Elimination-singularity diagnostics of a network's conv layers (pure torch: no nnU-Net import).

The Pool Skip paper judges elimination singularities (weights that collapse to zero, units that never
activate) by the l2/l1 ratio of every conv layer's weights along the network (its Figure 4). This
module computes, per conv layer:

``l2_l1``
    ``||W||_2 / ||W||_1`` over the layer's whole weight tensor, bias excluded. It lies in
    ``[1/sqrt(n), 1]`` for ``n`` weights; higher means sparser (1: a single non-zero weight).
``hoyer``
    Hoyer's normalised sparsity ``(sqrt(n) - l1/l2) / (sqrt(n) - 1)`` in ``[0, 1]`` (0: all weights
    equal in magnitude, 1: one non-zero weight). Unlike ``l2_l1`` it does not depend on the layer size.
``near_zero_fraction``
    the fraction of weights with ``|w| <= NEAR_ZERO_FACTOR * rms(W)`` (``rms`` over the same layer).
    The threshold is relative because a conv followed by a normalisation layer (every nnU-Net and
    V-Net conv) computes the same function at any weight scale, and weight scales differ by an order
    of magnitude between layers (He init: ``std = sqrt(2 / fan_in)``). For Gaussian weights the
    expected fraction is ``erf(0.01 / sqrt(2))`` = 0.8 %; exact zeros always count.
``zero_filter_channels``
    output channels whose whole filter is near zero by that rule (an eliminated unit's weights).
``dead_fraction`` / ``dead_channels``
    output channels whose pre-activation is ``<= 0`` at every voxel of every sample seen (see
    :class:`DeadUnitProbe`). For ReLU this is exactly "activation <= 0 everywhere"; for LeakyReLU,
    PReLU and ELU (whose outputs are negative, not zero, there) the pre-activation is what tells
    that the unit sits in its negative regime everywhere.

Empty conventions: an all-zero weight tensor has no defined ratio: ``l2_l1`` and ``hoyer`` are
``None`` (JSON null) and ``near_zero_fraction`` is 1. A one-weight layer has ``hoyer`` ``None``.
``dead_fraction`` is ``None`` when no data was run, for convs whose output reaches no
nonlinearity module (transposed convs of the nnU-Net decoder, segmentation heads, Pool Skip inner
convs), and for convs that did not run (lower deep-supervision heads with deep supervision off).

Layer walking and names (:func:`conv_layers`)
- Data-flow order. dynamic-network-architectures U-Nets (``encoder.stages`` + ``decoder.stages``,
  ``decoder.transpconvs``, ``decoder.seg_layers``): the encoder stem, encoder stages 0..S-1, then per
  decoder stage its transposed conv, its convs and its segmentation head. Other networks (MONAI
  VNet, ...): module registration order, which for VNet is its data-flow order (``in_tr``,
  ``down_tr32`` .. ``down_tr256``, ``up_tr256`` .. ``up_tr32``, ``out_tr``).
- Stage labels: ``encoder.<i>`` (the ResEnc stem counts as ``encoder.0``, as in
  :mod:`nnunet_poolskip.nn.inject`) and ``decoder.<s>`` for those U-Nets; the top-level child
  (``down_tr32``) otherwise.
- ``kind`` is ``"host"`` for every conv of the network itself and ``"poolskip"`` for a Pool Skip
  module's inner conv. Host convs keep their ``named_modules`` name, which is the same with and
  without Pool Skip: in a ``ConvDropoutNormReLU`` the conv is registered as ``.conv`` before
  ``all_modules`` (``named_modules`` de-duplicates ``all_modules.0``), so the baseline's
  ``encoder.stages.0.0.convs.0.conv`` is also the Pool Skip model's host conv. When a conv was
  wrapped as ``nn.Sequential(conv, PoolSkip)``, the wrapper's name is the host's name.
- A Pool Skip inner conv is named after its host: ``<host>`` with a final ``.conv`` replaced by
  ``.poolskip.conv`` (``encoder.stages.0.0.convs.0.poolskip.conv``), or ``<host>.poolskip.conv``.
  Its host is the conv that runs right before the Pool Skip module (the last host conv met before it
  in the walk).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnunet_poolskip.nn.pool_skip import is_pool_skip

NEAR_ZERO_FACTOR = 1e-2
"""A weight is near zero when ``|w| <= NEAR_ZERO_FACTOR * rms(layer weights)``."""

KINDS = ("host", "poolskip")

NONLINEARITIES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU,
                                    nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
"""Modules treated as a conv's nonlinearity (all are <= 0 exactly for inputs <= 0, or nearly so)."""


@dataclass
class ConvLayer:
    """One conv layer of a network, with its stable name.

    Attributes:
        name: stable qualified name (see the module docstring).
        module: the conv module itself (a ``torch.nn`` ``_ConvNd``, transposed convs included).
        kind: ``"host"`` (the network's own conv) or ``"poolskip"`` (a Pool Skip inner conv).
        stage: stage label, e.g. ``"encoder.0"``, ``"decoder.3"`` or ``"down_tr32"``.
        module_path: the module's actual path in ``named_modules`` (differs from ``name`` for Pool
            Skip inner convs and wrapped hosts).
        host: for ``"poolskip"``: the host conv's name (``None`` if no conv precedes it).
        has_pool_skip: for ``"host"``: whether a Pool Skip module follows this conv.
    """

    name: str
    module: nn.Module
    kind: str
    stage: str
    module_path: str
    host: Optional[str] = None
    has_pool_skip: bool = False

    @property
    def out_channel_axis(self) -> int:
        """Axis of the output channels in the weight: 1 for transposed convs (in, out/groups, ...), else 0."""
        return 1 if isinstance(self.module, _ConvTransposeNd) else 0

    @property
    def out_channels(self) -> int:
        return int(self.module.out_channels)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel / DataParallel and ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network


def _is_dna_unet(network: nn.Module) -> bool:
    encoder, decoder = getattr(network, "encoder", None), getattr(network, "decoder", None)
    return (isinstance(encoder, nn.Module) and isinstance(decoder, nn.Module) and hasattr(encoder, "stages")
            and all(hasattr(decoder, a) for a in ("stages", "transpconvs", "seg_layers")))


def _walk_roots(network: nn.Module) -> List[Tuple[str, nn.Module, Optional[str]]]:
    """(name prefix, module, stage label or None = top-level child name) in data-flow order."""
    roots: List[Tuple[str, nn.Module, Optional[str]]] = []
    if _is_dna_unet(network):
        encoder, decoder = network.encoder, network.decoder
        if getattr(encoder, "stem", None) is not None:
            roots.append(("encoder.stem", encoder.stem, "encoder.0"))
        for i, stage in enumerate(encoder.stages):
            roots.append((f"encoder.stages.{i}", stage, f"encoder.{i}"))
        for s in range(len(decoder.stages)):
            roots.append((f"decoder.transpconvs.{s}", decoder.transpconvs[s], f"decoder.{s}"))
            roots.append((f"decoder.stages.{s}", decoder.stages[s], f"decoder.{s}"))
            if s < len(decoder.seg_layers):
                roots.append((f"decoder.seg_layers.{s}", decoder.seg_layers[s], f"decoder.{s}"))
    roots.append(("", network, None))  # everything not yet seen, in registration order
    return roots


def _parent_path(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _host_name(network: nn.Module, path: str, module: nn.Module) -> str:
    """``path``, or the name of an ``nn.Sequential(conv, PoolSkip)`` wrapper around the conv."""
    parent_path = _parent_path(path)
    if parent_path:
        parent = network.get_submodule(parent_path)
        if (isinstance(parent, nn.Sequential) and len(parent) == 2 and parent[0] is module
                and is_pool_skip(parent[1])):
            return parent_path
    return path


def poolskip_conv_name(host_name: Optional[str], pool_skip_path: str) -> str:
    """Stable name of a Pool Skip inner conv: derived from its host's name (see the module docstring)."""
    if host_name is None:
        return f"{pool_skip_path}.conv"
    if host_name == "conv" or host_name.endswith(".conv"):
        return host_name[: -len("conv")] + "poolskip.conv"
    return f"{host_name}.poolskip.conv"


def conv_layers(network: nn.Module) -> List[ConvLayer]:
    """Every conv layer of ``network`` (any ``nn.Module``), in data-flow order, with stable names.

    Works on dynamic-network-architectures ``PlainConvUNet`` / ``ResidualEncoderUNet`` (with or
    without Pool Skip), MONAI ``VNet`` and any other module (registration order). Shared modules
    are listed once. See the module docstring for order, names and stages.
    """
    network = unwrap_network(network)
    seen: set = set()
    layers: List[ConvLayer] = []
    for prefix, root, stage in _walk_roots(network):
        last_host: Optional[ConvLayer] = None
        for path, module in root.named_modules(prefix=prefix):
            if id(module) in seen:
                continue
            seen.add(id(module))
            layer_stage = stage if stage is not None else (path.split(".")[0] or "network")
            if is_pool_skip(module):
                if last_host is not None:
                    last_host.has_pool_skip = True
                inner = getattr(module, "conv", None)
                if isinstance(inner, _ConvNd) and id(inner) not in seen:
                    seen.add(id(inner))
                    host = last_host.name if last_host is not None else None
                    layers.append(ConvLayer(poolskip_conv_name(host, path), inner, "poolskip", layer_stage,
                                            f"{path}.conv", host=host))
            elif isinstance(module, _ConvNd):
                last_host = ConvLayer(_host_name(network, path, module), module, "host", layer_stage, path)
                layers.append(last_host)
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"conv layer names are not unique: {duplicates}")
    return layers


def weight_statistics(weight: torch.Tensor, out_channel_axis: int = 0,
                      near_zero_factor: float = NEAR_ZERO_FACTOR) -> Dict:
    """Sparsity statistics of one weight tensor (on the tensor's device, sums in float64).

    Args:
        weight: a conv weight, output channels along ``out_channel_axis``.
        out_channel_axis: 0 for convs, 1 for transposed convs.
        near_zero_factor: a weight is near zero when ``|w| <= near_zero_factor * rms(weight)``.

    Returns:
        ``{"n_weights", "l2_l1", "hoyer", "near_zero_fraction", "zero_filter_channels",
        "zero_filter_fraction"}``; ``l2_l1`` / ``hoyer`` are ``None`` for an all-zero tensor and
        ``hoyer`` is ``None`` for a single weight (see the module docstring).
    """
    if near_zero_factor < 0:
        raise ValueError(f"near_zero_factor must be >= 0, got {near_zero_factor}")
    w = weight.detach()
    n = w.numel()
    if n == 0:
        raise ValueError("weight tensor is empty")
    magnitude = w.abs()
    # element-wise work in the weights' own dtype, sums accumulated in float64
    l1 = float(magnitude.sum(dtype=torch.float64))
    l2 = float(torch.linalg.vector_norm(w, dtype=torch.float64))
    l2_l1 = l2 / l1 if l1 > 0 else None
    hoyer = (math.sqrt(n) - l1 / l2) / (math.sqrt(n) - 1) if (l2 > 0 and n > 1) else None
    cutoff = near_zero_factor * l2 / math.sqrt(n)
    near_zero = magnitude <= cutoff
    per_filter = magnitude.movedim(out_channel_axis, 0).reshape(w.shape[out_channel_axis], -1).amax(dim=1)
    zero_filters = torch.nonzero(per_filter <= cutoff).flatten().tolist()
    return {
        "n_weights": n,
        "l2_l1": l2_l1,
        "hoyer": hoyer,
        "near_zero_fraction": float(near_zero.sum()) / n,
        "zero_filter_channels": zero_filters,
        "zero_filter_fraction": len(zero_filters) / w.shape[out_channel_axis],
    }


class DeadUnitProbe:
    """Forward hooks that find the dead output channels of every host conv over any number of passes.

    Which nonlinearity belongs to which conv is read from the forward pass itself: a nonlinearity
    module (:data:`NONLINEARITIES`) belongs to the host conv that ran last before it, when that conv
    has not yet got one in this pass and its channel count matches. So:
    - ``ConvDropoutNormReLU``: the block's own ``nonlin`` (after dropout/norm and after Pool Skip);
    - ResEnc ``BasicBlockD``: ``conv1`` gets ``conv1.nonlin``; ``conv2`` (no nonlinearity of its
      own) gets the block's ``nonlin2``, applied after the residual add: its dead units are the
      block's output channels that never activate; the 1x1 projection on ``skip`` gets none;
    - MONAI VNet: ``LUConv`` convs get their ``act_function``; ``in_tr`` gets its activation after
      the residual add; ``down_conv`` / ``up_conv`` get ``act_function1``; the stage-level
      ``act_function2`` (after ``ops`` + residual) belongs to no conv; ``out_tr.conv2`` gets none;
    - convs that reach no nonlinearity module (transposed convs, segmentation heads) get none.
    Pool Skip inner convs are never assigned: their output is added to the host's output, and the
    host's unit is what passes through the nonlinearity.

    The pre-activation is reduced (per-channel maximum) inside a forward pre-hook, before an
    ``inplace=True`` nonlinearity (nnU-Net's LeakyReLU) overwrites it. Nonlinearities applied as
    functions (``F.relu``) are invisible to hooks.

    Usage::

        with DeadUnitProbe(network) as probe, torch.no_grad():
            for batch in batches:
                network(batch)
        probe.results()
    """

    def __init__(self, network: nn.Module, layers: Optional[Sequence[ConvLayer]] = None) -> None:
        self.network = unwrap_network(network)
        self.layers = [layer for layer in (layers if layers is not None else conv_layers(self.network))
                       if layer.kind == "host"]
        self._handles: list = []
        self._last: Optional[str] = None
        self._assigned: set = set()
        self._max: Dict[str, torch.Tensor] = {}
        self._nonlin_name: Dict[str, str] = {}
        self._ran: set = set()
        self._out_channels = {layer.name: layer.out_channels for layer in self.layers}
        self.n_passes = 0
        self.n_samples = 0

    def __enter__(self) -> "DeadUnitProbe":
        self._handles.append(self.network.register_forward_pre_hook(self._on_network_start))
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._conv_hook(layer)))
        for path, module in self.network.named_modules():
            if isinstance(module, NONLINEARITIES):
                self._handles.append(module.register_forward_pre_hook(self._nonlin_hook(path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_network_start(self, module, args) -> None:
        self._last = None
        self._assigned = set()
        self.n_passes += 1
        if args and isinstance(args[0], torch.Tensor):
            self.n_samples += int(args[0].shape[0])

    def _conv_hook(self, layer: ConvLayer):
        def hook(module, args, output) -> None:
            self._last = layer.name
            self._ran.add(layer.name)
        return hook

    def _nonlin_hook(self, path: str):
        out_channels = self._out_channels

        def hook(module, args) -> None:
            name = self._last
            if name is None or name in self._assigned or not args:
                return
            x = args[0]
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != out_channels[name]:
                return
            self._assigned.add(name)
            dims = [d for d in range(x.dim()) if d != 1]
            channel_max = x.detach().amax(dim=dims).to(device="cpu", dtype=torch.float64)
            previous = self._max.get(name)
            self._max[name] = channel_max if previous is None else torch.maximum(previous, channel_max)
            self._nonlin_name.setdefault(name, path)
        return hook

    def results(self) -> Dict[str, Dict]:
        """Per host conv name: ``{"nonlinearity", "dead_channels", "dead_fraction"}``.

        ``nonlinearity`` is the module path of the nonlinearity used (``None``: none, or the conv did
        not run); ``dead_channels`` / ``dead_fraction`` are ``None`` in that case.
        """
        out = {}
        for layer in self.layers:
            channel_max = self._max.get(layer.name)
            if channel_max is None:
                out[layer.name] = {"nonlinearity": None, "dead_channels": None, "dead_fraction": None,
                                   "ran": layer.name in self._ran}
                continue
            dead = torch.nonzero(channel_max <= 0).flatten().tolist()
            out[layer.name] = {"nonlinearity": self._nonlin_name[layer.name], "dead_channels": dead,
                               "dead_fraction": len(dead) / layer.out_channels, "ran": True}
        return out


def dead_units(network: nn.Module, batches: Iterable[torch.Tensor],
               layers: Optional[Sequence[ConvLayer]] = None) -> Tuple[Dict[str, Dict], int]:
    """Run ``batches`` through ``network`` in eval mode without gradients; see :class:`DeadUnitProbe`.

    Args:
        network: the network (its train/eval mode is restored afterwards).
        batches: input tensors (batch, channels, *spatial), already on the network's device.
        layers: the layers from :func:`conv_layers` (computed if not given).

    Returns:
        (per host conv name: :meth:`DeadUnitProbe.results` entry, number of samples seen).
    """
    network = unwrap_network(network)
    was_training = network.training
    network.eval()
    try:
        with DeadUnitProbe(network, layers) as probe, torch.no_grad():
            for batch in batches:
                network(batch)
    finally:
        network.train(was_training)
    return probe.results(), probe.n_samples


def layer_diagnostics(network: nn.Module, batches: Optional[Iterable[torch.Tensor]] = None,
                      near_zero_factor: float = NEAR_ZERO_FACTOR) -> List[Dict]:
    """One JSON-ready record per conv layer, in data-flow order.

    Args:
        network: any ``nn.Module`` (wrappers are unwrapped).
        batches: inputs for the dead-unit analysis; ``None`` gives weight statistics only
            (``dead_fraction`` ``None``).
        near_zero_factor: see :data:`NEAR_ZERO_FACTOR`.

    Returns:
        Records with ``name, kind, stage, index, type, out_channels, n_weights, l2_l1, hoyer,
        near_zero_fraction, zero_filter_channels, zero_filter_fraction, dead_fraction,
        dead_channels, nonlinearity`` and ``has_pool_skip`` (host) or ``host`` (poolskip).
    """
    layers = conv_layers(network)
    dead = dead_units(network, batches, layers)[0] if batches is not None else {}
    records = []
    for index, layer in enumerate(layers):
        record = {"name": layer.name, "kind": layer.kind, "stage": layer.stage, "index": index,
                  "type": type(layer.module).__name__, "out_channels": layer.out_channels}
        record.update(weight_statistics(layer.module.weight, layer.out_channel_axis, near_zero_factor))
        entry = dead.get(layer.name, {})
        record["dead_fraction"] = entry.get("dead_fraction")
        record["dead_channels"] = entry.get("dead_channels")
        record["nonlinearity"] = entry.get("nonlinearity")
        if layer.kind == "host":
            record["has_pool_skip"] = layer.has_pool_skip
        else:
            record["host"] = layer.host
        records.append(record)
    return records


def summarize(records: Sequence[Dict]) -> Dict[str, Dict]:
    """Per kind: layer count, mean / max ``l2_l1`` (and the max's layer), mean ``hoyer`` and
    ``near_zero_fraction``, zero-filter and dead-unit counts, mean ``dead_fraction`` over the layers
    that have one (``None`` when none has). Kinds without layers are left out."""
    summary = {}
    for kind in KINDS:
        rows = [r for r in records if r["kind"] == kind]
        if not rows:
            continue
        ratios = [(r["l2_l1"], r["name"]) for r in rows if r["l2_l1"] is not None]
        hoyers = [r["hoyer"] for r in rows if r["hoyer"] is not None]
        dead = [r["dead_fraction"] for r in rows if r.get("dead_fraction") is not None]
        summary[kind] = {
            "n_layers": len(rows),
            "l2_l1_mean": sum(v for v, _ in ratios) / len(ratios) if ratios else None,
            "l2_l1_max": max(ratios)[0] if ratios else None,
            "l2_l1_max_layer": max(ratios)[1] if ratios else None,
            "hoyer_mean": sum(hoyers) / len(hoyers) if hoyers else None,
            "near_zero_fraction_mean": sum(r["near_zero_fraction"] for r in rows) / len(rows),
            "n_zero_filters": sum(len(r["zero_filter_channels"]) for r in rows),
            "n_dead_units": sum(len(r["dead_channels"]) for r in rows if r.get("dead_channels") is not None),
            "dead_fraction_mean": sum(dead) / len(dead) if dead else None,
        }
    return summary


def is_encoder_stage(stage: Optional[str]) -> bool:
    """True for the stage label of an encoder conv: ``encoder.<i>`` (dynamic-network-architectures U-Nets, stem
    included) or V-Net's stem ``in_tr`` and its encoder stages ``down_tr32`` .. ``down_tr256``."""
    from nnunet_poolskip.nn.vnet import VNET_ENCODER_STAGES

    return stage is not None and (stage.startswith("encoder.") or stage in ("in_tr", *VNET_ENCODER_STAGES))


def encoder_summary(records: Sequence[Dict]) -> Dict:
    """The two elimination-singularity figures of a network's encoder, from :func:`layer_diagnostics` records.

    Over the encoder's host convs (:func:`is_encoder_stage`; Pool Skip inner convs left out):
    ``l2_l1_median``: the median of their l2/l1 ratios (``None`` when none has one); ``n_units``: output channels
    of those with a dead-unit result (a nonlinearity follows and data ran), ``n_dead_units``: how many of them are
    dead, ``dead_fraction``: their ratio (``None`` when ``n_units`` is 0); ``n_layers``: how many host convs.
    """
    hosts = [r for r in records if r["kind"] == "host" and is_encoder_stage(r.get("stage"))]
    ratios = [r["l2_l1"] for r in hosts if r["l2_l1"] is not None]
    probed = [r for r in hosts if r.get("dead_channels") is not None]
    n_units = sum(int(r["out_channels"]) for r in probed)
    n_dead = sum(len(r["dead_channels"]) for r in probed)
    return {"n_layers": len(hosts), "l2_l1_median": statistics.median(ratios) if ratios else None,
            "n_units": n_units, "n_dead_units": n_dead,
            "dead_fraction": n_dead / n_units if n_units else None}
