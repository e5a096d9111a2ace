"""The paper's Table 3 protocol as data: which models, which trainers, which data sets, which folds.

This module is the single source of truth for the benchmark's model names. A model name (what users
type after ``--models``) maps to one nnU-Net trainer class name; for AMOS, ``nnunet_poolskip`` maps to
``nnUNetTrainerPoolSkipAMOS`` (Pool Skip in all encoder stages but the last), as in the paper. Any
trainer class name (``nnUNetTrainer...``) is also accepted as a model name and used as it is.

The baseline ``nnunet`` is ``nnUNetTrainerBaseline``: nnU-Net's own trainer and network, unchanged,
which in addition honours the ``NNUNET_POOLSKIP_*`` short-schedule variables, so that under a short
schedule the baseline and the Pool Skip model train for exactly as long. With those variables unset
(the ``paper`` profile removes them from the environment of every step) it trains exactly as
``nnUNetTrainer``. ``nnunet_stock`` selects the stock ``nnUNetTrainer`` itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

CONFIGURATION = "3d_fullres"
"""The nnU-Net configuration the paper's 3D models are trained in (the benchmark's default)."""

CONFIGURATIONS: Tuple[str, ...] = ("3d_fullres", "2d", "3d_lowres")
"""The nnU-Net configurations the benchmark trains (``--configuration``); the cascade is not one of them."""

PROTOCOLS: Tuple[str, ...] = ("test", "cv", "both")
"""``--protocol``: ``test`` scores the softmax fold ensemble on the held-out test set (the paper's); ``cv`` scores
every case of the trained folds once, by nnU-Net's final validation of the fold that held it out (nnU-Net
Revisited's); ``both`` reports both."""

VNET_TRAINER_PREFIX = "nnUNetTrainerVNet"
"""Trainer class names of the V-Net family (MONAI's V-Net is 3D only)."""

DEFAULT_PLANS = "nnUNetPlans"
"""nnU-Net's default plans identifier (what ``nnUNetv2_plan_and_preprocess`` writes)."""

RESENC_PLANS: Dict[str, Tuple[str, str]] = {
    "M": ("nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM"),
    "L": ("nnUNetResEncUNetLPlans", "nnUNetPlannerResEncL"),
}
"""nnU-Net's residual-encoder presets: size -> (plans identifier, experiment planner class) as nnU-Net names them."""

PAPER_FOLDS: Tuple[int, ...] = (0, 1, 2, 3, 4)
"""5-fold cross-validation on train+val; the test set is predicted by the softmax average of all five."""

PAPER_MODELS: Tuple[str, ...] = ("nnunet", "nnunet_poolskip", "vnet", "vnet_poolskip")
"""The four rows of the paper's Table 3 (its table lists V-Net first; the order here is the table's)."""


@dataclass(frozen=True)
class Model:
    """One row of a comparison table.

    Attributes:
        name: the model name on the command line (``--models``).
        display: the name printed in tables.
        trainer: nnU-Net trainer class name.
        trainer_amos: trainer class name used instead on AMOS (None: same as ``trainer``).
        base: the model this one is compared against in the paper (its row without Pool Skip).
        plans: the nnU-Net plans identifier the model trains with (a plans preset appends its suffix).
        planner: the nnU-Net experiment planner that writes ``plans`` (``nnUNetv2_plan_experiment -pl``); None:
            nnU-Net's default planner, run by ``nnUNetv2_plan_and_preprocess``.
    """

    name: str
    display: str
    trainer: str
    trainer_amos: Optional[str] = None
    base: Optional[str] = None
    plans: str = DEFAULT_PLANS
    planner: Optional[str] = None

    def trainer_for(self, dataset_kind: str) -> str:
        """The trainer class name for a data set kind (``btcv``, ``amos`` or ``custom``)."""
        if dataset_kind == "amos" and self.trainer_amos:
            return self.trainer_amos
        return self.trainer


MODELS: Dict[str, Model] = {m.name: m for m in (
    Model("nnunet", "nnU-Net", "nnUNetTrainerBaseline"),
    Model("nnunet_poolskip", "nnU-Net + Pool Skip", "nnUNetTrainerPoolSkip",
          trainer_amos="nnUNetTrainerPoolSkipAMOS", base="nnunet"),
    Model("vnet", "V-Net", "nnUNetTrainerVNet"),
    Model("vnet_poolskip", "V-Net + Pool Skip", "nnUNetTrainerVNetPoolSkip", base="vnet"),
    # variants and the paper's Table 4 ablations
    Model("nnunet_stock", "nnU-Net (stock trainer)", "nnUNetTrainer"),
    Model("nnunet_poolskip_all", "nnU-Net + Pool Skip (all stages)", "nnUNetTrainerPoolSkip", base="nnunet"),
    Model("nnunet_poolskip_amos", "nnU-Net + Pool Skip (all but last stage)", "nnUNetTrainerPoolSkipAMOS",
          base="nnunet"),
    Model("nnunet_poolskip_s4", "nnU-Net + Pool Skip (pool size 4)", "nnUNetTrainerPoolSkipS4", base="nnunet"),
    Model("ablation_pool_skip", "nnU-Net + pool skip only", "nnUNetTrainerAblationPoolSkip", base="nnunet"),
    Model("ablation_conv_skip", "nnU-Net + conv skip only", "nnUNetTrainerAblationConvSkip", base="nnunet"),
    Model("ablation_pool_conv", "nnU-Net + pool-conv, no skip", "nnUNetTrainerAblationPoolConv", base="nnunet"),
    Model("vnet_poolskip_all", "V-Net + Pool Skip (all stages)", "nnUNetTrainerVNetPoolSkipAll", base="vnet"),
    # nnU-Net's residual-encoder presets (nnU-Net Revisited): baselines of matched compute, and Pool Skip on them
    Model("nnunet_resenc_m", "nnU-Net ResEnc M", "nnUNetTrainerBaseline", plans=RESENC_PLANS["M"][0],
          planner=RESENC_PLANS["M"][1]),
    Model("nnunet_resenc_l", "nnU-Net ResEnc L", "nnUNetTrainerBaseline", plans=RESENC_PLANS["L"][0],
          planner=RESENC_PLANS["L"][1]),
    Model("nnunet_resenc_m_poolskip", "nnU-Net ResEnc M + Pool Skip", "nnUNetTrainerPoolSkip",
          trainer_amos="nnUNetTrainerPoolSkipAMOS", base="nnunet_resenc_m", plans=RESENC_PLANS["M"][0],
          planner=RESENC_PLANS["M"][1]),
    Model("nnunet_resenc_l_poolskip", "nnU-Net ResEnc L + Pool Skip", "nnUNetTrainerPoolSkip",
          trainer_amos="nnUNetTrainerPoolSkipAMOS", base="nnunet_resenc_l", plans=RESENC_PLANS["L"][0],
          planner=RESENC_PLANS["L"][1]),
)}

CONV_SKIP_CONTROL = "nnUNetTrainerAblationConvSkip"
"""The paper's conv-skip ablation: a control of matched compute for Pool Skip, not a Pool Skip model."""


def is_pool_skip_model(model: Model) -> bool:
    """True for a model compared against a baseline (it has ``base``) other than the conv-skip control."""
    return model.base is not None and model.trainer != CONV_SKIP_CONTROL


def is_compute_control(model: Model) -> bool:
    """True for a model that can serve as a control of matched compute: a baseline (no ``base``) or the conv-skip
    ablation."""
    return model.base is None or model.trainer == CONV_SKIP_CONTROL


@dataclass(frozen=True)
class DatasetKind:
    """A data set the benchmark knows how to convert.

    Attributes:
        name: ``btcv`` or ``amos``.
        dataset_id: default nnU-Net dataset id (the converters' defaults).
        converter: the ``nnunet-poolskip`` subcommand that converts the raw download.
        n_test: size of the paper's held-out test set.
    """

    name: str
    dataset_id: int
    converter: str
    n_test: int


DATASET_KINDS: Dict[str, DatasetKind] = {
    "btcv": DatasetKind("btcv", 17, "convert-btcv", 12),
    "amos": DatasetKind("amos", 218, "convert-amos", 120),
}


def resolve_model(name: str) -> Model:
    """The Model for a model name, or an ad-hoc Model for a trainer class name (``nnUNetTrainer...``).

    Raises:
        ValueError: naming the unknown model and listing the known ones.
    """
    if name in MODELS:
        return MODELS[name]
    if name.startswith("nnUNetTrainer"):
        return Model(name, name, name)
    raise ValueError(f"unknown model {name!r}: use one of {sorted(MODELS)} or a trainer class name "
                     f"(nnUNetTrainer...)")


def parse_models(text: Sequence[str] | str) -> List[Model]:
    """Models from ``--models`` (comma- and/or space-separated names), in the order given, no duplicates."""
    if isinstance(text, str):
        text = [text]
    names = [n.strip() for part in text for n in part.split(",") if n.strip()]
    if not names:
        raise ValueError("--models is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--models names {duplicates} more than once")
    return [resolve_model(n) for n in names]


def check_configuration(configuration: str, trainers: Sequence[str], models: Sequence[Model] = ()) -> None:
    """Refuse a configuration the benchmark cannot train, 3D-only trainers in the 2D configuration, or models with
    their own planner (the ResEnc presets) outside 3d_fullres.

    Args:
        configuration: ``--configuration`` (an nnU-Net configuration name).
        trainers: the trainer class names of the run's models.
        models: the run's models. The ResEnc presets are planned, checked and preprocessed for 3d_fullres only
            (benchmark/model_plans.py): with another configuration they would train on the default plans' data
            under plans never checked for it, so they are refused.

    Raises:
        ValueError: naming the configuration (and the trainers), and what to use instead.
    """
    if configuration == "3d_cascade_fullres":
        raise ValueError("--configuration 3d_cascade_fullres is not supported: the cascade needs the 3d_lowres "
                         "predictions of every fold first; compare 3d_fullres, 2d or 3d_lowres models")
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"--configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    if configuration == "2d":
        three_d = [t for t in trainers if t.startswith(VNET_TRAINER_PREFIX)]
        if three_d:
            raise ValueError(f"--configuration 2d: the V-Net trainers {sorted(set(three_d))} train 3D configurations "
                             f"only (MONAI's V-Net is a 3D network); leave the V-Net models out of --models "
                             f"(e.g. --models nnunet,nnunet_poolskip)")
    own_plans = [m.name for m in models if m.planner is not None]
    if own_plans and configuration != CONFIGURATION:
        raise ValueError(f"--configuration {configuration}: the models {own_plans} use nnU-Net's ResEnc plans, which "
                         f"this benchmark plans and preprocesses for {CONFIGURATION} only; leave them out of --models "
                         f"or compare them in {CONFIGURATION}")


def check_trainers_available(trainers: Sequence[str]) -> None:
    """Raise ValueError naming every trainer that neither this project nor nnU-Net provides.

    Imports nnU-Net (slow): call it once, before any long work.
    """
    from nnunet_poolskip.training import TRAINERS

    missing = []
    for trainer in trainers:
        if trainer in TRAINERS:
            continue
        try:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            recursive_find_trainer_class_by_name(trainer)
        except Exception:  # nnU-Net raises RuntimeError; anything else also means "not usable"
            missing.append(trainer)
    if missing:
        raise ValueError(f"trainer class(es) {missing} not found in nnunet_poolskip.training.TRAINERS nor in "
                         f"nnU-Net; check --models")
