"""The input checks both converters share, and their error type (nothing here writes).

Layout and pairing first (cheap), then per case the image and label headers (3D, one component, same shape,
spacing, origin, direction, within ``nnunet_poolskip.utilities.geometry``'s tolerances), that both files are
complete (``nnunet_poolskip.utilities.image_integrity``: SimpleITK would read a truncated ``.nii.gz`` as zeros)
and the label values (within the label table). Every failure raises :class:`ConversionError` naming the case,
file or argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Pattern, Sequence

import numpy as np

from nnunet_poolskip.dataset_conversion.layouts import split_nifti_name
from nnunet_poolskip.utilities.geometry import Geometry, ImageHeaderError, geometry_mismatch, read_geometry
from nnunet_poolskip.utilities.image_integrity import IncompleteImageError, check_image_file_complete


class ConversionError(ValueError):
    """Bad conversion input or output; the message names the case, file or argument."""


@dataclass(frozen=True)
class SourceCase:
    """One labelled case of a download.

    Attributes:
        case_id: nnU-Net case identifier (``img0001``, ``amos_0001``).
        image, label: the source files.
        stratum: what splits and folds are stratified by (modality: "ct" or "mri").
    """

    case_id: str
    image: Path
    label: Path
    stratum: str = "ct"


def scan_nifti_folder(folder: Path, pattern: Pattern, what: str, example: str,
                      case_id: Callable[[int], str]) -> Dict[int, Path]:
    """NIfTI files of a download folder by case number.

    Hidden files and non-NIfTI files are ignored; a NIfTI file whose stem does not match ``pattern`` (one
    group: the case number) means a wrong layout. ``what``, ``example`` (a valid file name) and ``case_id``
    (case number -> case id) serve the error messages.

    Raises:
        ConversionError: missing folder, a file not matching ``pattern``, two files with the same case number.
    """
    if not folder.is_dir():
        raise ConversionError(f"missing folder {folder} ({what})")
    found: Dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        parts = split_nifti_name(path.name)
        if path.name.startswith(".") or parts is None:
            continue
        match = pattern.match(parts[0])
        if match is None:
            raise ConversionError(f"unexpected file {path} in {what} (expected names like {example}): is this "
                                  f"the right folder?")
        number = int(match.group(1))
        if number in found:
            raise ConversionError(f"duplicate case {case_id(number)} in {what}: {found[number].name} and {path.name}")
        found[number] = path
    return found


def pair_images_and_labels(images: Mapping[int, Path], labels: Mapping[int, Path], case_id,
                           where: str) -> List[int]:
    """Sorted case numbers present in both; raises ConversionError naming unpaired cases."""
    only_images = sorted(set(images) - set(labels))
    only_labels = sorted(set(labels) - set(images))
    problems = []
    if only_images:
        problems.append(f"image without label: {', '.join(case_id(n) for n in only_images[:10])}")
    if only_labels:
        problems.append(f"label without image: {', '.join(case_id(n) for n in only_labels[:10])}")
    if problems:
        raise ConversionError(f"{where}: " + "; ".join(problems))
    return sorted(images)


def check_unique_ids(cases: Sequence[SourceCase]) -> None:
    """Raises ConversionError if two cases share an id (e.g. the same AMOS case in Tr and Va)."""
    seen: Dict[str, SourceCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise ConversionError(f"duplicate case id {case.case_id}: {seen[case.case_id].image} and {case.image}")
        seen[case.case_id] = case


def _header(path: Path) -> Geometry:
    try:
        return read_geometry(path)
    except ImageHeaderError as error:
        raise ConversionError(str(error)) from None


def geometry_problems(image: Geometry, label: Geometry) -> List[str]:
    """Ways in which an image and its label map do not share one voxel grid (empty list: they do).

    Tolerances are those of ``nnunet_poolskip.utilities.geometry`` (one source of truth for "same geometry").
    """
    problems = []
    for what, header in (("image", image), ("label", label)):
        if len(header.size) != 3 or header.components != 1:
            problems.append(f"{what} is not a 3D scalar image (size {header.size}, {header.components} components)")
    if not problems:
        mismatch = geometry_mismatch(image, label)
        if mismatch:
            problems.append(f"image/label {mismatch}")
    return problems


def label_value_problems(path: Path, max_label: int) -> List[str]:
    """Problems of a label map's values: non-integers, or values outside 0..max_label (empty list: none)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ConversionError(f"cannot read {path}: {str(error).strip().splitlines()[-1]}") from None
    array = sitk.GetArrayViewFromImage(image)  # a view: `image` must stay alive while it is used
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            return ["label map has non-integer values"]
    if array.min() >= 0 and array.max() <= max_label:
        return []
    outside = np.unique(array[(array < 0) | (array > max_label)])
    shown = ", ".join(str(int(v)) for v in outside[:10])
    return [f"label values {{{shown}}} outside the label table 0..{max_label}"]


def incomplete_file_problems(*paths: Path) -> List[str]:
    """Truncated or corrupt files among ``paths``, one problem each naming the file (empty list: all complete)."""
    problems = []
    for path in paths:
        try:
            check_image_file_complete(path)
        except IncompleteImageError as error:
            problems.append(str(error))
        except OSError as error:
            problems.append(f"cannot read {path}: {error.strerror or error}")
    return problems


def validate_cases(cases: Sequence[SourceCase], max_label: int, progress: bool = True) -> None:
    """Check every case's image/label geometry, that both files are complete, and the label values; raise one
    error listing all failed cases.

    Raises:
        ConversionError: ``"<n> case(s) failed the input checks: <case>: <problem>; ..."``.
    """
    from tqdm import tqdm

    failures = []
    for case in tqdm(cases, desc="checking cases", unit="case", disable=not progress):
        problems = geometry_problems(_header(case.image), _header(case.label))
        if not problems:
            problems = incomplete_file_problems(case.image, case.label)
        if not problems:
            problems = label_value_problems(case.label, max_label)
        failures += [f"{case.case_id}: {p} ({case.image.name}, {case.label.name})" for p in problems]
    if failures:
        raise ConversionError(f"{len(failures)} problem(s) in the input: " + "; ".join(failures))
