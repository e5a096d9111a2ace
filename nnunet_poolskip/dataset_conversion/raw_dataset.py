"""Writing an nnU-Net raw data set atomically, and the conversion procedure both converters share.

Input checks (:mod:`nnunet_poolskip.dataset_conversion.checks`) run before anything is written. Output goes to
a hidden temporary folder beside the target, renamed into place at the end, so a failure leaves nothing
half-written; the temporary folder of a conversion that was killed is removed by the next one. A record of the
conversion (``nnunet_poolskip_conversion.json``) makes a rerun with the same settings a no-op.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional

from nnunet_poolskip.dataset_conversion.checks import ConversionError, SourceCase, check_unique_ids, validate_cases
from nnunet_poolskip.dataset_conversion.splits import load_split_file, split_cases
from nnunet_poolskip.utilities.atomic import (
    OutputPathError,
    check_output_path,
    remove_stale_temporaries,
    replace_directory,
    temporary_folder,
)

RECORD_NAME = "nnunet_poolskip_conversion.json"
SPLITS_NAME = "splits_final.json"


def resolve_raw_root(output_root: Optional[str]) -> Path:
    """The nnU-Net raw folder to write into: ``output_root`` if given, else ``$nnUNet_raw``.

    Raises:
        ConversionError: neither is given, or the folder could not be written (a file in the way, no
            permission); checked before any input is read.
    """
    if output_root:
        option, value = "-o/--output-root", output_root
    else:
        option, value = "$nnUNet_raw", os.environ.get("nnUNet_raw")
        if not value:
            raise ConversionError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (nnU-Net's raw data "
                                  "folder) or pass -o/--output-root")
    try:
        return check_output_path(Path(value).expanduser().resolve(), option, folder=True)
    except OutputPathError as error:
        raise ConversionError(str(error)) from None


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name of a data set: ``Dataset017_BTCV``."""
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"--dataset-id must be in 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


@dataclass
class RawDataset:
    """Everything a converter writes: cases by part, dataset.json arguments, folds and the record.

    ``dataset_json`` holds the keyword arguments of nnU-Net's ``generate_dataset_json`` (without
    ``output_folder`` and ``num_training_cases``).
    """

    raw_root: Path
    folder_name: str
    train: List[SourceCase]
    test: List[SourceCase]
    dataset_json: Dict
    folds: List[Dict[str, List[str]]]
    settings: Dict
    extra_record: Dict = field(default_factory=dict)

    @property
    def target(self) -> Path:
        return self.raw_root / self.folder_name


def existing_output_action(raw_root: Path, folder_name: str, settings: Mapping, overwrite: bool) -> str:
    """What to do about the target folder: "write" (absent, or --overwrite) or "noop" (same conversion done).

    Raises:
        ConversionError: another data set with the same id exists; the target exists (not from this
            conversion) and ``overwrite`` is False.
    """
    prefix = folder_name.split("_", 1)[0] + "_"
    # nnU-Net resolves an id to a name through all three folders; two names for one id break its commands
    roots = [raw_root] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results") if os.environ.get(v)]
    for root in roots:
        if root.is_dir():
            others = sorted(p.name for p in root.iterdir() if p.name.startswith(prefix) and p.name != folder_name)
            if others:
                raise ConversionError(f"{root} already has {', '.join(others)} with the same data set id; nnU-Net "
                                      f"needs unique ids: choose another --dataset-id")
    target = raw_root / folder_name
    if not target.exists():
        return "write"
    if overwrite:
        return "write"
    record_file = target / RECORD_NAME
    if not record_file.is_file():
        raise ConversionError(f"{target} exists and was not written by this converter; use --overwrite to "
                              f"replace it")
    try:
        recorded = json.loads(record_file.read_text()).get("settings")
    except json.JSONDecodeError:
        recorded = None
    if recorded != dict(settings):
        raise ConversionError(f"{target} exists from a conversion with other settings (recorded: {recorded}); "
                              f"use --overwrite to replace it")
    return "noop"


def _copy_nifti(source: Path, destination: Path) -> None:
    """Byte copy of a .nii.gz; a .nii is rewritten compressed by SimpleITK (same voxels and geometry)."""
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, destination)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(sitk.ReadImage(str(source)), str(destination), useCompression=True)


def write_raw_dataset(dataset: RawDataset, progress: bool = True) -> Path:
    """Write the data set to a temporary folder beside the target, then rename it into place.

    An existing target (only passed here with --overwrite) is replaced only once the new one is complete.
    Returns the target folder.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from nnunet_poolskip.utilities.atomic import write_json_atomic

    dataset.raw_root.mkdir(parents=True, exist_ok=True)
    target = dataset.target
    temporary = temporary_folder(target)
    if temporary.exists():
        shutil.rmtree(temporary)
    try:
        jobs = []
        for part, cases in (("Tr", dataset.train), ("Ts", dataset.test)):
            for sub in (f"images{part}", f"labels{part}"):
                (temporary / sub).mkdir(parents=True)
            for case in cases:
                jobs.append((case.image, temporary / f"images{part}" / f"{case.case_id}_0000.nii.gz"))
                jobs.append((case.label, temporary / f"labels{part}" / f"{case.case_id}.nii.gz"))
        for source, destination in tqdm(jobs, desc=f"writing {dataset.folder_name}", unit="file",
                                        disable=not progress):
            _copy_nifti(source, destination)
        generate_dataset_json(str(temporary), num_training_cases=len(dataset.train), **dataset.dataset_json)
        write_json_atomic(dataset.folds, temporary / SPLITS_NAME)
        record = {"settings": dict(dataset.settings), **dataset.extra_record,
                  "test": sorted(c.case_id for c in dataset.test),
                  "train": sorted(c.case_id for c in dataset.train)}
        write_json_atomic(record, temporary / RECORD_NAME)
        replace_directory(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def install_splits_preprocessed(folder_name: str, folds: List[Dict[str, List[str]]]) -> Optional[str]:
    """Put ``splits_final.json`` into ``$nnUNet_preprocessed/<folder_name>/`` where nnUNetv2_train reads it.

    nnUNetv2_plan_and_preprocess copies the raw folder's splits_final.json there itself when none exists
    and asserts that an existing one agrees, so writing both places covers conversion before and after
    planning. Returns a note for the user (None if nnUNet_preprocessed is unset).
    """
    from nnunet_poolskip.utilities.atomic import write_json_atomic

    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        return (f"nnUNet_preprocessed is not set: nnUNetv2_plan_and_preprocess will copy {SPLITS_NAME} from the "
                f"raw folder when it runs")
    folder = Path(root).expanduser() / folder_name
    path = folder / SPLITS_NAME
    if path.is_file():
        try:
            if json.loads(path.read_text()) == folds:
                return f"{path} already holds these folds"
        except json.JSONDecodeError:
            pass
        write_json_atomic(folds, path)
        stale = any((folder / name).exists() for name in ("dataset_fingerprint.json", "nnUNetPlans.json"))
        return (f"replaced {path}" + ("; the preprocessed data there predates this conversion: rerun "
                                      "nnUNetv2_plan_and_preprocess" if stale else ""))
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folds, path)
    return f"wrote {path}"


def summarize(strata: Mapping[str, str], ids: Iterable[str]) -> str:
    """``"12 (ct 8, mri 4)"``: how many of ``ids`` per stratum."""
    ids = list(ids)
    counts: Dict[str, int] = {}
    for case_id in ids:
        counts[strata[case_id]] = counts.get(strata[case_id], 0) + 1
    if len(counts) <= 1:
        return str(len(ids))
    return f"{len(ids)} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"


@dataclass
class ConversionResult:
    """Outcome of a conversion: the data set folder, whether anything was written, the split and notes."""

    target: Path
    written: bool
    test: List[str]
    train: List[str]
    folds: List[Dict[str, List[str]]]
    notes: List[str]


def convert_dataset(*, command: str, split_dataset: str, valid_id: Callable[[str], bool], source: Path,
                    folder_name: str, split_file: Path, output_root: Optional[str], overwrite: bool,
                    discover: Callable[[], List[SourceCase]], max_label: int,
                    dataset_json: Callable[[List[SourceCase], List[SourceCase]], Dict],
                    settings: Mapping, progress: bool = True) -> ConversionResult:
    """The conversion procedure both converters share.

    Order: cheap checks first (output root, split file, existing output, layout and pairing, the split),
    then the per-case checks that read every file, then the atomic write, then splits_final.json in
    ``$nnUNet_preprocessed``.

    Args:
        command: the subcommand name (recorded).
        split_dataset: the data set name split files must carry, if they name one ("BTCV", "AMOS2022").
        valid_id: tells whether a string is a case id of this data set.
        source: the download folder.
        folder_name: ``DatasetXXX_Name``.
        split_file: the split file to apply.
        output_root: overrides ``$nnUNet_raw``.
        overwrite: replace an existing target.
        discover: returns the labelled cases of the download (raises ConversionError on layout problems).
        max_label: largest valid label value.
        dataset_json: ``(train cases, test cases) -> generate_dataset_json keyword arguments``.
        settings: what makes two conversions the same (recorded; a rerun with equal settings is a no-op).
    """
    raw_root = resolve_raw_root(output_root)
    if not source.is_dir():
        raise ConversionError(f"source folder {source} does not exist")
    spec = load_split_file(split_file, split_dataset, valid_id)
    settings = {"command": command, "source": str(source.resolve()), **settings, "split_file_sha256": spec.sha256}
    target = raw_root / folder_name
    # what a killed conversion left (a full-size hidden copy): removed by any rerun, a no-op one included
    notes = [f"removed {p}, left by a conversion whose process is gone" for p in remove_stale_temporaries(target)]
    if existing_output_action(raw_root, folder_name, settings, overwrite) == "noop":
        record = json.loads((target / RECORD_NAME).read_text())
        folds = json.loads((target / SPLITS_NAME).read_text())
        return ConversionResult(target, False, record["test"], record["train"], folds, notes + [
            f"{target} already holds this conversion: nothing to do (--overwrite redoes it)"])
    cases = discover()
    if not cases:
        raise ConversionError(f"no labelled cases found in {source}")
    check_unique_ids(cases)
    by_id = {case.case_id: case for case in cases}
    split = split_cases(spec, {case.case_id: case.stratum for case in cases})
    validate_cases(cases, max_label, progress)
    train = [by_id[i] for i in split.train]
    test = [by_id[i] for i in split.test]
    dataset = RawDataset(raw_root=raw_root, folder_name=folder_name, train=train, test=test,
                         dataset_json=dataset_json(train, test), folds=split.folds, settings=settings,
                         extra_record={"split_file": str(spec.path), "split_notes": split.notes})
    write_raw_dataset(dataset, progress)
    notes += split.notes
    note = install_splits_preprocessed(folder_name, split.folds)
    if note:
        notes.append(note)
    return ConversionResult(target, True, split.test, split.train, split.folds, notes)
