"""Argument-time checks of the split the benchmark will make: enough cases for the folds and the test set, folds
that exist.

The converters split the labelled cases by a split file (``dataset_conversion/splits.py``); the case ids are known
before anything is written: the phantoms' from ``--cases`` (``synth`` numbers them deterministically), a BTCV/AMOS
download's from its file names (listed, not read). So ``--cases 8``, which would fail after synthesis ("5-fold
cross-validation needs at least 5 train+val cases"), is refused before any work, by ``--dry-run`` as by a real run,
with the smallest ``--cases`` that works.
"""
from __future__ import annotations

from typing import Dict, Optional

from nnunet_poolskip.benchmark.config import BenchmarkConfig
from nnunet_poolskip.dataset_conversion.checks import ConversionError
from nnunet_poolskip.dataset_conversion.splits import SplitSpec, load_split_file, shipped_split_file, split_test_train

#: How far above ``--cases`` the smallest working value is looked for (the split is a few hashes per case).
_SEARCH_LIMIT = 5000


def _split_spec(config: BenchmarkConfig) -> SplitSpec:
    from nnunet_poolskip.dataset_conversion.amos import SPLIT_DATASET as AMOS_SPLIT
    from nnunet_poolskip.dataset_conversion.amos import is_amos_case_id
    from nnunet_poolskip.dataset_conversion.btcv import SPLIT_DATASET as BTCV_SPLIT
    from nnunet_poolskip.dataset_conversion.btcv import is_btcv_case_id

    kind = config.target.kind
    dataset, valid_id = (BTCV_SPLIT, is_btcv_case_id) if kind == "btcv" else (AMOS_SPLIT, is_amos_case_id)
    path = config.split_file or shipped_split_file(kind)
    try:
        return load_split_file(path, dataset, valid_id)
    except ConversionError as error:
        raise ValueError(f"--split-file: {error}") from None


def _selected(config: BenchmarkConfig, strata: Dict[str, str]) -> Dict[str, str]:
    """The cases the converter keeps: AMOS ``--modality`` selects one stratum."""
    from nnunet_poolskip.dataset_conversion.amos import DEFAULT_MODALITY

    modality = (config.modality or DEFAULT_MODALITY) if config.target.kind == "amos" else "all"
    return {case: stratum for case, stratum in strata.items() if modality == "all" or stratum == modality}


def _problem(spec: SplitSpec, strata: Dict[str, str]) -> Optional[str]:
    """Why the split of these cases cannot serve the protocol (None when it can)."""
    if not strata:
        return "no labelled case is left"
    try:
        split = split_test_train(spec, strata)
    except ConversionError as error:
        return str(error)
    counts = f"{len(split.test)} test and {len(split.train)} train+val cases (split file {spec.path.name})"
    if len(split.train) < spec.n_folds:
        return f"{counts}; {spec.n_folds}-fold cross-validation needs at least {spec.n_folds} train+val cases"
    if not split.test:
        return f"{counts}; the benchmark predicts and evaluates a test set of at least one case"
    return None


def check_case_counts(config: BenchmarkConfig) -> None:
    """Refuse, before any work, a run whose conversion would leave too few train+val cases for the folds or no
    test case, or whose ``--folds`` name folds the split does not have.

    Checked for BTCV/AMOS runs that still have to be converted (phantoms from ``--cases``, or ``--raw``); a data set
    already converted, or one of the user's own, was split when it was made.

    Raises:
        ValueError: naming the option, the counts the split would give and, for phantoms, the smallest ``--cases``
            that works.
    """
    from nnunet_poolskip.benchmark.protocol import DATASET_KINDS

    target = config.target
    if target.kind not in DATASET_KINDS:
        return
    spec = _split_spec(config)
    missing = [f for f in config.settings.folds if f >= spec.n_folds]
    if missing:
        raise ValueError(f"--folds {' '.join(map(str, missing))} does not exist: the split has {spec.n_folds} "
                         f"folds (0-{spec.n_folds - 1}), split file {spec.path.name}")
    converted = target.raw_folder(config.workspace)
    if converted is not None and (converted / "dataset.json").is_file():
        return
    if config.synthetic:
        from nnunet_poolskip.dataset_conversion.phantoms import labelled_phantom_strata

        cases = config.settings.synthetic_cases

        def problem_with(n: int) -> Optional[str]:
            return _problem(spec, _selected(config, labelled_phantom_strata(target.kind, n)))

        problem = problem_with(cases)
        if problem is None:
            return
        # the test and train+val counts never fall as phantoms are added (see splits.py): the first that works is
        # the smallest, and every larger count works too
        works = next((n for n in range(cases + 1, cases + _SEARCH_LIMIT) if problem_with(n) is None), None)
        advice = f"use --cases {works} or more" if works else "use another --split-file"
        raise ValueError(f"--cases {cases} gives {problem}: {advice}")
    if config.raw_source is not None and config.raw_source.is_dir():
        from nnunet_poolskip.dataset_conversion.amos import discover_amos
        from nnunet_poolskip.dataset_conversion.btcv import discover_btcv

        try:
            found = discover_btcv(config.raw_source) if target.kind == "btcv" else \
                discover_amos(config.raw_source, config.modality or "all")
        except ConversionError as error:
            raise ValueError(f"--raw: {error}") from None
        problem = _problem(spec, _selected(config, {case.case_id: case.stratum for case in found}))
        if problem is not None:
            raise ValueError(f"--raw {config.raw_source} has {len(found)} labelled cases, which give {problem}")
