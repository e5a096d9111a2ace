"""Test/train split files and the 5-fold cross-validation: deterministic, documented, stratified.

A split file (JSON; shipped ones in ``nnunet_poolskip/dataset_conversion/split_files/<dataset>_split.json``) has
the keys

    dataset      optional; if present it must name the data set being converted ("BTCV", "AMOS2022")
    description, procedure, source   optional free text (what the split is, how it was made)
    test         case ids that go to the test set (imagesTs/labelsTs)
    train        case ids that go to train+val (imagesTr/labelsTr and the cross-validation)
    unlisted     optional rule for cases listed in neither: {"rule": "seeded-hash", "seed": S,
                 "test_fraction": "1/3"}; without it, an unlisted case is an error
    folds        optional: {"n_folds": 5, "seed": S} (default n_folds 5, seed 12345)

Ids listed in the file but absent from the data are ignored (reported as a note), so a shipped split still
applies to a subset of the data (e.g. to fewer phantoms).

The "seeded-hash" rule, per stratum (the converter's strata: AMOS modality, "ct"/"mri"; BTCV has one):
sort the unlisted cases by SHA-256 of ``"<seed>:test:<case id>"`` and put the first
``floor(n * test_fraction + 1/2)`` of them in the test set. It depends on nothing but the ids (no random
number generator whose stream could change between library versions), a case's rank does not depend on
which other cases exist, and on the full AMOS data (300 CT + 60 MRI, fraction 1/3) it gives exactly the
paper's 100 + 20 = 120 test cases, 2:1 within each modality.

Folds: the train+val cases of each stratum are sorted by SHA-256 of ``"<seed>:fold:<case id>"``; the strata
(in sorted order) are concatenated and the cases dealt to the folds round-robin, so the validation sets are
disjoint, cover every train+val case, differ in size by at most one (4:1 train:val), and spread each
modality evenly over the folds.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Union

from nnunet_poolskip.dataset_conversion.checks import ConversionError

SPLIT_FILES_FOLDER = Path(__file__).resolve().parent / "split_files"
SHIPPED_SPLIT_FILES = {"btcv": "btcv_split.json", "amos": "amos_split.json"}
NO_TEST_SPLIT = "none"
"""``--split-file none``: the shipped ``no_test_split.json`` (every labelled case in the cross-validation)."""
NO_TEST_SPLIT_FILE = "no_test_split.json"
DEFAULT_N_FOLDS = 5
DEFAULT_FOLD_SEED = 12345
_KNOWN_KEYS = {"format", "dataset", "description", "procedure", "source", "test", "train", "unlisted", "folds"}


@dataclass(frozen=True)
class UnlistedRule:
    """The seeded-hash rule for cases a split file does not list (see the module docstring)."""

    seed: int
    test_fraction: Fraction


@dataclass(frozen=True)
class SplitSpec:
    """A parsed split file."""

    path: Path
    sha256: str
    dataset: Optional[str]
    test: FrozenSet[str]
    train: FrozenSet[str]
    unlisted: Optional[UnlistedRule]
    n_folds: int = DEFAULT_N_FOLDS
    fold_seed: int = DEFAULT_FOLD_SEED


@dataclass
class Split:
    """The split of the cases found in the data: sorted test and train+val ids, folds and notes."""

    test: List[str]
    train: List[str]
    folds: List[Dict[str, List[str]]]
    notes: List[str] = field(default_factory=list)


def shipped_split_file(kind: str) -> Path:
    """Path of the split file shipped for ``kind`` ("btcv" or "amos")."""
    try:
        return SPLIT_FILES_FOLDER / SHIPPED_SPLIT_FILES[kind]
    except KeyError:
        raise ValueError(f"no shipped split file for {kind!r}; known: {sorted(SHIPPED_SPLIT_FILES)}") from None


def resolve_split_file(value: Optional[Union[str, os.PathLike]], kind: str) -> Path:
    """The split file a converter applies: ``value`` as a path, the shipped no-test split for ``none``
    (any case), or the shipped split of ``kind`` ("btcv" or "amos") when ``value`` is None or empty."""
    if value is None or str(value) == "":
        return shipped_split_file(kind)
    if str(value).lower() == NO_TEST_SPLIT:
        return SPLIT_FILES_FOLDER / NO_TEST_SPLIT_FILE
    return Path(value)


def _parse_fraction(value, where: str) -> Fraction:
    try:
        fraction = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise ConversionError(f"{where}: test_fraction {value!r} is not a number or a fraction like \"1/3\"") \
            from None
    if not 0 <= fraction < 1:
        raise ConversionError(f"{where}: test_fraction must be in [0, 1), got {value!r}")
    return fraction


def _int_field(mapping: Mapping, key: str, default: Optional[int], where: str) -> int:
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def load_split_file(path: Union[str, os.PathLike], dataset: str,
                    valid_id: Callable[[str], bool]) -> SplitSpec:
    """Read and check a split file.

    Args:
        path: the JSON file.
        dataset: the data set being converted ("BTCV" or "AMOS2022"); a file naming another one is refused.
        valid_id: tells whether a string is a case id of this data set (e.g. ``img0001``).

    Raises:
        ConversionError: missing or unparsable file, unknown keys, malformed ids, ids in both lists, bad rule.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"split file {path} not found")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConversionError(f"split file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"split file {path} must hold a JSON object")
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConversionError(f"split file {path}: unknown keys {unknown} (known: {sorted(_KNOWN_KEYS)})")
    if data.get("dataset") not in (None, dataset):
        raise ConversionError(f"split file {path} is for data set {data['dataset']!r}, not {dataset!r}")
    lists = {}
    for key in ("test", "train"):
        ids = data.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ConversionError(f"split file {path}: {key!r} must be a list of case ids")
        bad = [i for i in ids if not valid_id(i)]
        if bad:
            raise ConversionError(f"split file {path}: {key!r} holds ids that are not {dataset} case ids: {bad[:5]}")
        if len(set(ids)) != len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ConversionError(f"split file {path}: {key!r} lists ids twice: {duplicates}")
        lists[key] = frozenset(ids)
    both = sorted(lists["test"] & lists["train"])
    if both:
        raise ConversionError(f"split file {path}: ids in both 'test' and 'train': {both}")
    unlisted = None
    if data.get("unlisted") is not None:
        rule = data["unlisted"]
        where = f"split file {path}, 'unlisted'"
        if not isinstance(rule, dict) or rule.get("rule") != "seeded-hash":
            raise ConversionError(f"{where}: expected {{\"rule\": \"seeded-hash\", \"seed\": S, "
                                  f"\"test_fraction\": \"1/3\"}}")
        unlisted = UnlistedRule(seed=_int_field(rule, "seed", None, where),
                                test_fraction=_parse_fraction(rule.get("test_fraction"), where))
    folds = data.get("folds") or {}
    if not isinstance(folds, dict):
        raise ConversionError(f"split file {path}: 'folds' must be an object like {{\"n_folds\": 5, \"seed\": 1}}")
    n_folds = _int_field(folds, "n_folds", DEFAULT_N_FOLDS, f"split file {path}, 'folds'")
    if n_folds < 2:
        raise ConversionError(f"split file {path}: n_folds must be at least 2, got {n_folds}")
    return SplitSpec(path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest(), dataset=data.get("dataset"),
                     test=lists["test"], train=lists["train"], unlisted=unlisted, n_folds=n_folds,
                     fold_seed=_int_field(folds, "seed", DEFAULT_FOLD_SEED, f"split file {path}, 'folds'"))


def hash_rank(seed: int, purpose: str, case_id: str) -> str:
    """The sort key of a case in the seeded-hash procedures: SHA-256 hex of ``"<seed>:<purpose>:<case id>"``."""
    return hashlib.sha256(f"{seed}:{purpose}:{case_id}".encode()).hexdigest()


def rounded_count(n: int, fraction: Fraction) -> int:
    """``floor(n * fraction + 1/2)``: the number of test cases among ``n`` (halves round up)."""
    return int((n * fraction + Fraction(1, 2)) // 1)


def _by_stratum(cases: Mapping[str, str], ids) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for case_id in ids:
        groups.setdefault(cases[case_id], []).append(case_id)
    return groups


def make_folds(train_cases: Mapping[str, str], n_folds: int = DEFAULT_N_FOLDS,
               seed: int = DEFAULT_FOLD_SEED) -> List[Dict[str, List[str]]]:
    """Stratified, deterministic k-fold cross-validation in nnU-Net's ``splits_final.json`` form.

    Args:
        train_cases: ``{case id: stratum}`` of the train+val cases (stratum: e.g. modality).
        n_folds: number of folds.
        seed: seed of the seeded-hash order (see the module docstring).

    Returns:
        ``[{"train": [...], "val": [...]}, ...]`` with sorted id lists; validation sets are disjoint and cover
        all cases.

    Raises:
        ConversionError: fewer cases than folds.
    """
    if len(train_cases) < n_folds:
        raise ConversionError(f"{n_folds}-fold cross-validation needs at least {n_folds} train+val cases, "
                              f"found {len(train_cases)}")
    dealt: List[str] = []
    for stratum, ids in sorted(_by_stratum(train_cases, train_cases).items()):
        dealt += sorted(ids, key=lambda i: (hash_rank(seed, "fold", i), i))
    val_sets: List[List[str]] = [[] for _ in range(n_folds)]
    for position, case_id in enumerate(dealt):
        val_sets[position % n_folds].append(case_id)
    everything = sorted(train_cases)
    folds = []
    for val in map(set, val_sets):
        folds.append({"train": [i for i in everything if i not in val], "val": sorted(val)})
    return folds


def split_cases(spec: SplitSpec, cases: Mapping[str, str]) -> Split:
    """Split the cases found in the data into test and train+val, and make the folds.

    Args:
        spec: the split file.
        cases: ``{case id: stratum}`` of every labelled case found.

    Raises:
        ConversionError: a case the file does not list while it has no ``unlisted`` rule; too few train+val
            cases for the folds.
    """
    split = split_test_train(spec, cases)
    split.folds = make_folds({i: cases[i] for i in split.train}, spec.n_folds, spec.fold_seed)
    return split


def split_test_train(spec: SplitSpec, cases: Mapping[str, str]) -> Split:
    """The test and train+val parts of :func:`split_cases`, without the folds (``folds`` empty): what a caller
    can check before converting anything (e.g. that there are enough train+val cases for the folds).

    Raises:
        ConversionError: a case the file does not list while it has no ``unlisted`` rule.
    """
    notes = []
    absent = sorted((spec.test | spec.train) - set(cases))
    if absent:
        notes.append(f"{len(absent)} case(s) listed in {spec.path.name} are not in the data and were skipped "
                     f"(e.g. {', '.join(absent[:3])})")
    test = {i for i in cases if i in spec.test}
    train = {i for i in cases if i in spec.train}
    unlisted = sorted(set(cases) - test - train)
    if unlisted:
        if spec.unlisted is None:
            raise ConversionError(f"case {unlisted[0]} is in neither 'test' nor 'train' of split file {spec.path} "
                                  f"({len(unlisted)} such case(s)) and the file has no 'unlisted' rule")
        rule = spec.unlisted
        for stratum, ids in sorted(_by_stratum(cases, unlisted).items()):
            ranked = sorted(ids, key=lambda i: (hash_rank(rule.seed, "test", i), i))
            n_test = rounded_count(len(ranked), rule.test_fraction)
            test.update(ranked[:n_test])
            train.update(ranked[n_test:])
        if rule.test_fraction == 0:
            notes.append(f"no test split ({spec.path.name}): all {len(unlisted)} case(s) are in train+val and the "
                         f"cross-validation")
        else:
            notes.append(f"{len(unlisted)} case(s) not listed in {spec.path.name} were split by its seeded-hash "
                         f"rule (seed {rule.seed}, test fraction {rule.test_fraction}, per modality)")
    return Split(test=sorted(test), train=sorted(train), folds=[], notes=notes)

