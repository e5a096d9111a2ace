"""NSD tolerances (mm) per label: one default for all, or a table (shipped preset or JSON file) by label or organ.

A table is a JSON object, either flat, ``{"1": 2.0, "liver": 5.0}``, or structured like the shipped presets
(``nnunet_poolskip/evaluation/nsd_tolerances_<preset>.json``): ``{"tolerances_mm": {...}, "aliases": {...}}``.
Keys made of digits are label values; other keys are organ names, matched to the label names (from
dataset.json) after normalisation: lower case, punctuation and ``_`` as spaces, word order ignored, so
"kidney_right" matches "right kidney". Labels a table does not cover get the default tolerance, and the
caller is told which ones (they end up in summary.json's notes).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

DEFAULT_TOLERANCE_MM = 1.0
PRESETS_FOLDER = Path(__file__).resolve().parent  # nsd_tolerances_<preset>.json lie beside this module
PRESET_PREFIX = "nsd_tolerances_"


def available_presets() -> List[str]:
    """Names of the shipped tolerance presets (e.g. ``flare22``)."""
    return sorted(p.stem[len(PRESET_PREFIX):] for p in PRESETS_FOLDER.glob(f"{PRESET_PREFIX}*.json"))


def normalize_organ_name(name: str) -> str:
    """Canonical form of an organ name for matching: lower-case words, sorted, single spaces."""
    return " ".join(sorted(re.sub(r"[^0-9a-z]+", " ", name.lower()).split()))


def _check_mm(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: NSD tolerance must be a finite number of mm >= 0, got {value!r}")
    return float(value)


def load_tolerance_table(spec: str) -> Tuple[Dict[int, float], Dict[str, float], str]:
    """Read a tolerance table.

    Args:
        spec: a shipped preset name (see ``available_presets()``) or the path of a JSON file.
    Returns:
        (tolerance in mm by label value, tolerance in mm by normalised organ name, a name for messages).
    Raises:
        FileNotFoundError: neither a preset nor an existing file.
        ValueError: malformed content, naming the file and the key.
    """
    path = PRESETS_FOLDER / f"{PRESET_PREFIX}{spec.lower()}.json"
    if not path.is_file():
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"NSD tolerance table {spec!r} is neither a preset {available_presets()} "
                                    f"nor an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"NSD tolerance table {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"NSD tolerance table {path} must be a JSON object")
    entries = data.get("tolerances_mm", data)
    aliases = data.get("aliases", {}) if "tolerances_mm" in data else {}
    if not isinstance(entries, dict) or not isinstance(aliases, dict):
        raise ValueError(f"NSD tolerance table {path}: 'tolerances_mm' and 'aliases' must be JSON objects")
    by_label: Dict[int, float] = {}
    by_name: Dict[str, float] = {}
    for key, value in entries.items():
        mm = _check_mm(value, f"{path} key {key!r}")
        if key.strip().isdigit():
            by_label[int(key)] = mm
        else:
            by_name[normalize_organ_name(key)] = mm
    for alias, target in aliases.items():
        if normalize_organ_name(str(target)) not in by_name:
            raise ValueError(f"NSD tolerance table {path}: alias {alias!r} points to {target!r}, "
                             f"which has no tolerance")
        by_name[normalize_organ_name(alias)] = by_name[normalize_organ_name(str(target))]
    return by_label, by_name, (path.stem[len(PRESET_PREFIX):] if path.parent == PRESETS_FOLDER else str(path))


def resolve_tolerances(labels: Mapping[int, str], default_mm: float = DEFAULT_TOLERANCE_MM,
                       table: Optional[str] = None,
                       aliases: Optional[Mapping[str, str]] = None) -> Tuple[Dict[int, float], List[str]]:
    """The NSD tolerance (mm) of every label, and notes on labels that fell back to the default.

    Args:
        labels: label value -> organ name (foreground labels only).
        default_mm: tolerance in mm for every label a table does not cover (all labels without a table).
        table: preset name or JSON path (see the module docstring), or None.
        aliases: other spellings of organ names -> the name to look up instead, tried when a label's own name
            is not in the table (the caller's knowledge of data sets, e.g. the AMOS download's "arota" ->
            "aorta"; matched after the same normalisation).
    Returns:
        ({label: tolerance_mm}, notes): notes name the labels the table did not cover.
    Raises:
        ValueError: a table entry names a label value that is not in ``labels``, the table matches no label
            at all (e.g. organ names in the table but bare label values from ``--labels``), or a bad default.
    """
    default_mm = _check_mm(default_mm, "--nsd-tolerance")
    tolerances = {label: default_mm for label in labels}
    if table is None:
        return tolerances, []
    by_label, by_name, table_name = load_tolerance_table(table)
    unknown = sorted(set(by_label) - set(labels))
    if unknown:
        raise ValueError(f"NSD tolerance table {table_name} gives label values {unknown}, which are not in the "
                         f"label set {sorted(labels)}")
    other_names = {normalize_organ_name(k): normalize_organ_name(v) for k, v in (aliases or {}).items()}
    uncovered = []
    for label, name in labels.items():
        key = normalize_organ_name(name)
        if key not in by_name:
            key = other_names.get(key, key)
        if label in by_label:
            tolerances[label] = by_label[label]
        elif key in by_name:
            tolerances[label] = by_name[key]
        else:
            uncovered.append(f"{label} ({name})")
    if len(uncovered) == len(labels):
        raise ValueError(f"NSD tolerance table {table_name} matches none of the labels "
                         f"{', '.join(uncovered)}; organ names come from --dataset-json")
    notes = []
    if uncovered:
        notes.append(f"NSD tolerance table {table_name} does not cover labels {', '.join(uncovered)}: "
                     f"they use {default_mm:g} mm")
    return tolerances, notes
