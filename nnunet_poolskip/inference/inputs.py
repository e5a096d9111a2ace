"""What ``predict -i`` names, resolved into cases before any network runs.

``-i`` takes, for the model it predicts with:

- an nnU-Net-style folder of ``CASE_0000<file_ending>`` (``CASE_0001`` ... for multi-channel models): outputs are
  ``CASE<file_ending>``, as nnU-Net names them;
- for single-channel models, one or more image files of any format SimpleITK reads (``.nii``, ``.nii.gz``,
  ``.nrrd``, ``.mha``, ``.mhd``, ...), and/or folders each holding one DICOM series (SimpleITK's GDCM series
  reader; a folder with several series needs ``--series-uid``): outputs are ``NAME.nii.gz`` named after the file
  (its name without the image ending) or the folder.

Every case is checked here (readable, complete, 3D for a 3D model, one channel, DICOM slices evenly spaced with none
missing), so that a bad input is named before a model is loaded and nothing is written for it.

How the images reach nnU-Net: image files are handed to the model's own reader (nnU-Net's ``SimpleITKIO`` reads
every SimpleITK format), exactly as ``nnUNetv2_predict`` would read them. A DICOM series is read once here with
SimpleITK's ``ImageSeriesReader`` and written to a temporary MetaImage (``.mha``) file that the model's reader then
reads: MetaImage keeps the series' spacing, origin and direction in double precision (NIfTI would round them to
float32), so nnU-Net's properties, and the label map written from them, carry the series' own geometry. The temporary
files live in a folder that :class:`ResolvedInputs` removes when closed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError, check_case_images, group_case_files
from nnunet_poolskip.utilities.geometry import ImageHeaderError, read_geometry
from nnunet_poolskip.utilities.image_integrity import IncompleteImageError, check_image_file_complete

#: Endings of single image files, longest first (so that ``ct.nii.gz`` is named ``ct``, not ``ct.nii``).
IMAGE_ENDINGS = (".nii.gz", ".gipl.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".tif", ".tiff")
#: The label map written for single files and DICOM series.
NIFTI_ENDING = ".nii.gz"
#: Slice positions may deviate from even spacing by this fraction of the spacing (and at least SLICE_ATOL_MM).
SLICE_RTOL = 0.01
SLICE_ATOL_MM = 0.01


class InputError(PredictionInputError):
    """Bad ``predict -i`` input; the message names the file, folder or series."""


@dataclass
class DicomSeries:
    """One DICOM series in a folder, slices in the order SimpleITK stacks them (the label map's z order)."""

    folder: Path
    uid: str
    files: List[Path]
    description: str

    def label(self) -> str:
        uid = self.uid or "(empty SeriesInstanceUID)"
        return f"{uid} ({self.description or 'no description'}, {len(self.files)} slices)"


@dataclass
class PredictionCase:
    """One case to predict.

    Attributes:
        name: output base name (``NAME.nii.gz``).
        source: what the user gave (the file, the nnU-Net case's files, or the DICOM folder), for messages.
        files: the channel files nnU-Net's reader gets (for DICOM, the temporary ``.mha``; set by ``materialize``).
        output_ending: file ending of the label map (the dataset's for nnU-Net-style folders, else ``.nii.gz``).
        series: the DICOM series, when the case is one.
    """

    name: str
    source: str
    files: List[Path]
    output_ending: str
    series: Optional[DicomSeries] = None


@dataclass
class ResolvedInputs:
    """The cases of ``predict -i``; ``close()`` removes the temporary files of DICOM cases."""

    cases: Dict[str, PredictionCase]
    form: str  # "folder" (nnU-Net-style), "files" (image files and/or DICOM folders)
    temporary_folder: Optional[Path] = None
    _closed: bool = field(default=False, repr=False)

    @property
    def has_dicom(self) -> bool:
        return any(case.series is not None for case in self.cases.values())

    def close(self) -> None:
        if self.temporary_folder is not None and not self._closed:
            shutil.rmtree(self.temporary_folder, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "ResolvedInputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_name(path: Path) -> str:
    """A single image file's name without its image ending (``ct.nii.gz`` -> ``ct``)."""
    lower = path.name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending) and len(lower) > len(ending):
            return path.name[:-len(ending)]
    return path.stem


def is_nnunet_folder(folder: Path, file_ending: str) -> bool:
    """Whether ``folder`` holds files with the dataset's ending (the nnU-Net-style form of ``-i``)."""
    return any(p.is_file() and not p.name.startswith(".") and p.name.endswith(file_ending) for p in folder.iterdir())


def resolve_inputs(inputs: Sequence[os.PathLike | str], file_ending: str, n_channels: int,
                   image_dimension: Optional[int], series_uid: Optional[str] = None,
                   reader_endings: Optional[Sequence[str]] = None) -> ResolvedInputs:
    """Resolve ``predict -i`` into checked cases (see the module docstring); reads DICOM series into temporaries.

    Args:
        inputs: what ``-i`` names: one nnU-Net-style folder, or image files and/or DICOM series folders.
        file_ending: the dataset's file ending (dataset.json), e.g. ``.nii.gz``.
        n_channels: input channels of the model (dataset.json ``channel_names``).
        image_dimension: 3 for 3D configurations (each case must be a 3D image), 2 for 2D ones (2D or 3D images);
            None: not checked.
        series_uid: SeriesInstanceUID of the series to predict in folders that hold several (``--series-uid``).
        reader_endings: None when the model's image reader reads every SimpleITK format (nnU-Net's SimpleITKIO and
            its subclasses: :func:`reader_endings_of`); else the only file endings it reads (then no DICOM).
    Returns:
        the cases by output name; close it (or use it as a context manager) to remove DICOM temporaries.
    Raises:
        InputError: naming the file, folder or series: nothing to predict, an unreadable, truncated, 2D or 4D image,
            a multi-channel image or a multi-channel model given files, several DICOM series and no (or an unknown)
            ``--series-uid``, missing or unevenly spaced slices, two inputs with the same output name.
    """
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise InputError(f"input {path} does not exist")
    if len(paths) == 1 and paths[0].is_dir() and is_nnunet_folder(paths[0], file_ending):
        try:
            grouped = group_case_files(paths[0], file_ending, n_channels)
            for case, files in grouped.items():
                check_case_images(case, files, file_ending)
        except PredictionInputError as error:
            raise InputError(str(error)) from None
        cases = {case: PredictionCase(case, f"case {case}", files, file_ending) for case, files in grouped.items()}
        for case in cases.values():
            _check_dimension(case.files, image_dimension, n_channels=1, where=case.source)
        return ResolvedInputs(cases, "folder")

    for path in paths:
        if path.is_dir() and is_nnunet_folder(path, file_ending):
            raise InputError(f"{path} is an nnU-Net-style folder (CASE_0000{file_ending}): give it alone to -i")
    if n_channels != 1:
        raise InputError(f"the model takes {n_channels} channels per case: give -i an nnU-Net-style folder with "
                         f"CASE_0000{file_ending} ... CASE_{n_channels - 1:04d}{file_ending} (single image files and "
                         f"DICOM series are for single-channel models)")
    if reader_endings is not None:  # e.g. NibabelIO: .nii/.nii.gz only, and the temporary .mha is not for it
        for path in paths:
            if path.is_dir() or not path.name.lower().endswith(tuple(reader_endings)):
                raise InputError(f"{path}: the model reads images with a reader that takes only "
                                 f"{', '.join(reader_endings)} files (plans.json image_reader_writer); convert it to "
                                 f"one of those first")
    cases: Dict[str, PredictionCase] = {}
    temporary = None
    try:
        for path in paths:
            if path.is_dir():
                series = find_dicom_series(path, series_uid)
                case = PredictionCase(path.resolve().name, f"DICOM series {series.label()} in {path}", [],
                                      NIFTI_ENDING, series)
            else:
                _check_image_file(path)
                case = PredictionCase(image_name(path), str(path), [path], NIFTI_ENDING)
                _check_dimension([path], image_dimension, n_channels, where=str(path))
            if case.name in cases:
                raise InputError(f"{cases[case.name].source} and {case.source} would both be written as "
                                 f"{case.name}{NIFTI_ENDING}: predict them into separate output folders")
            cases[case.name] = case
        for case in cases.values():
            if case.series is not None:
                if temporary is None:
                    temporary = Path(tempfile.mkdtemp(prefix="nnunet-poolskip-dicom-"))
                case.files = [read_series_to_file(case.series, temporary / f"{case.name}_0000.mha")]
                _check_dimension(case.files, image_dimension, n_channels, where=case.source)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ResolvedInputs(cases, "files", temporary)


def configuration_dimension(plans_file: os.PathLike | str, configuration: str) -> Optional[int]:
    """2 or 3: the dimension of a configuration's patches in a model's plans.json (None for a file without
    configurations, which is no nnU-Net plans file).

    Raises:
        InputError: the plans have no such configuration (naming those they have).
    """
    import json

    data = json.loads(Path(plans_file).read_text())
    configurations = data.get("configurations")
    if configurations is None:  # not plans nnU-Net wrote: nnU-Net's own loading will say so
        return None
    if configuration not in configurations:
        raise InputError(f"configuration {configuration!r} is not in {plans_file} (it has "
                         f"{', '.join(configurations)})")
    entry, seen = configurations[configuration], {configuration}
    while "patch_size" not in entry and entry.get("inherits_from") in configurations:  # as nnU-Net resolves it
        if entry["inherits_from"] in seen:
            break
        seen.add(entry["inherits_from"])
        entry = configurations[entry["inherits_from"]]
    return len(entry["patch_size"]) if "patch_size" in entry else None


def reader_endings_of(plans_file: os.PathLike | str) -> Optional[tuple]:
    """None when the model's image reader (plans.json ``image_reader_writer``) is nnU-Net's SimpleITKIO or a subclass
    (it reads every SimpleITK format); else the file endings that reader supports."""
    import json

    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    name = json.loads(Path(plans_file).read_text()).get("image_reader_writer", "SimpleITKIO")
    reader = recursive_find_reader_writer_by_name(name)
    return None if issubclass(reader, SimpleITKIO) else tuple(reader.supported_file_endings)


def refuse_dicom_seg_for_files(inputs: Sequence[os.PathLike | str]) -> None:
    """``--output-type dicom-seg`` needs DICOM series: refuse image files before anything is read.

    Raises:
        InputError: naming the first input that is a file.
    """
    for path in map(Path, inputs):
        if path.is_file():
            raise InputError(f"--output-type dicom-seg is for DICOM series input (a folder of DICOM files); {path} "
                             f"is an image file: use --output-type nifti")


def _check_image_file(path: Path) -> None:
    try:
        read_geometry(path)
        check_image_file_complete(path)
    except (ImageHeaderError, IncompleteImageError) as error:
        raise InputError(str(error)) from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from None


def _check_dimension(files: Sequence[Path], image_dimension: Optional[int], n_channels: int, where: str) -> None:
    """A 3D model takes 3D images with one component each (a 2D model takes 2D or 3D ones)."""
    if image_dimension is None:
        return
    for path in files:
        try:
            geometry = read_geometry(path)
        except ImageHeaderError as error:
            raise InputError(str(error)) from None
        size = geometry.size
        if geometry.components != 1:
            raise InputError(f"{where}: the image has {geometry.components} components per voxel (a vector or "
                             f"colour image), but the model takes {n_channels} channel(s) of one grey value each")
        if len(size) == 4 and size[3] > 1:
            raise InputError(f"{where}: the image is 4D ({' x '.join(map(str, size))} voxels, x y z t): the model "
                             f"takes one 3D image per channel ({n_channels} channel(s)); split the volumes first")
        if len(size) == 4:
            continue
        if len(size) < image_dimension or len(size) > 3:
            raise InputError(f"{where}: the image is {len(size)}D ({' x '.join(map(str, size))} voxels) but the "
                             f"model's configuration is {image_dimension}D")


def find_dicom_series(folder: Path, series_uid: Optional[str] = None) -> DicomSeries:
    """The DICOM series to predict in ``folder`` (not its subfolders), its slices checked.

    Args:
        folder: a folder holding DICOM files (other files are ignored).
        series_uid: which series, when the folder holds several; None when it holds one.
    Raises:
        InputError: no image and no DICOM series in the folder; several series and no ``series_uid`` (the message
            lists each with its description and slice count); an unknown ``series_uid``; a file of the series that
            GDCM cannot read (truncated or corrupt); missing, doubled or unevenly spaced slices; slices that differ in
            size, pixel spacing or orientation.
    """
    import SimpleITK as sitk

    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"no input images in {folder}: it holds neither nnU-Net-style CASE_0000 image files nor a "
                         f"DICOM series (give image files themselves, e.g. -i ct.nii.gz, or a folder of one DICOM "
                         f"series)")
    series = []
    for uid in uids:
        files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
        series.append(DicomSeries(folder, uid, files, _series_description(files[0])))
    if series_uid is None and len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series; choose one with --series-uid: "
                         + "; ".join(s.label() for s in series))
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise InputError(f"--series-uid {series_uid} is not in {folder}, which holds: "
                             + "; ".join(s.label() for s in series))
        chosen = chosen[0]
    else:
        chosen = series[0]
    listed = {f.resolve() for s in series for f in s.files}
    _check_left_out_files(folder, chosen, listed)
    check_series_slices(chosen)
    return chosen


def _series_description(path: Path) -> str:
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # the description is for messages only
        return ""
    return str(dataset.get("SeriesDescription", "") or "")


def _check_left_out_files(folder: Path, series: DicomSeries, listed: set) -> None:
    """GDCM silently leaves out a file of the series it cannot read (e.g. truncated): name it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.resolve() in listed:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError):
            continue  # not DICOM (notes, DICOMDIR-less folders): not ours to judge
        if "Rows" in dataset and str(dataset.get("SeriesInstanceUID", "")) == series.uid:
            raise InputError(f"{path} is an image of DICOM series {series.label()} in {folder}, but it cannot be "
                             f"read as part of the series (truncated or corrupt?): copy it again")


def check_series_slices(series: DicomSeries) -> None:
    """Every slice complete, one size, pixel spacing and orientation, positions evenly spaced along the normal.

    Raises:
        InputError: naming the series and the file(s).
    """
    import pydicom

    headers = []
    for path in series.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                dataset = pydicom.dcmread(path)  # reads the pixel bytes (not decoded): a cut file shows here
            except Exception as error:
                raise InputError(f"DICOM series {series.label()}: cannot read {path}: {error}") from None
        ended_early = [w for w in caught if "End of file" in str(w.message)]
        if "PixelData" not in dataset or ended_early:
            raise InputError(f"DICOM series {series.label()}: {path} is truncated (its pixel data is incomplete)")
        if not dataset.file_meta.TransferSyntaxUID.is_compressed:
            needed = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                      * int(dataset.get("NumberOfFrames", 1) or 1) * int(dataset.BitsAllocated) // 8)
            if len(dataset.PixelData) < needed:
                raise InputError(f"DICOM series {series.label()}: {path} is truncated ({len(dataset.PixelData)} "
                                 f"pixel bytes, {needed} expected)")
        try:
            headers.append((path, (int(dataset.Rows), int(dataset.Columns)),
                            tuple(float(v) for v in dataset.PixelSpacing),
                            np.array([float(v) for v in dataset.ImageOrientationPatient]),
                            np.array([float(v) for v in dataset.ImagePositionPatient])))
        except (AttributeError, ValueError, TypeError) as error:
            raise InputError(f"DICOM series {series.label()}: {path} lacks the geometry of a slice (Rows, Columns, "
                             f"PixelSpacing, ImageOrientationPatient, ImagePositionPatient): {error}") from None
    first = headers[0]
    for path, size, spacing, orientation, _ in headers[1:]:
        if size != first[1] or not np.allclose(spacing, first[2], rtol=1e-4) or \
                not np.allclose(orientation, first[3], atol=1e-4):
            raise InputError(f"DICOM series {series.label()}: {path.name} differs from {first[0].name} in size, "
                             f"pixel spacing or orientation ({size}, {spacing} mm vs {first[1]}, {first[2]} mm): "
                             f"not one volume")
    if len(headers) < 2:
        return
    normal = np.cross(first[3][:3], first[3][3:])
    positions = np.array([float(np.dot(h[4], normal)) for h in headers])
    order = np.argsort(positions)
    gaps = np.diff(positions[order])
    step = float(np.median(gaps))
    if step <= SLICE_ATOL_MM:
        i = int(np.argmin(gaps))
        raise InputError(f"DICOM series {series.label()}: {headers[order[i]][0].name} and "
                         f"{headers[order[i + 1]][0].name} lie at the same position: doubled slices")
    tolerance = max(SLICE_ATOL_MM, SLICE_RTOL * step)
    uneven = np.flatnonzero(np.abs(gaps - step) > tolerance)
    if uneven.size:
        i = int(uneven[0])
        kind = "a missing slice?" if gaps[i] > step else "unevenly spaced slices"
        raise InputError(f"DICOM series {series.label()}: slices {headers[order[i]][0].name} and "
                         f"{headers[order[i + 1]][0].name} are {gaps[i]:.3f} mm apart, the others {step:.3f} mm "
                         f"({kind}); {len(uneven)} uneven gap(s) in {len(headers)} slices")


def read_series_to_file(series: DicomSeries, path: Path) -> Path:
    """Read a DICOM series with SimpleITK (rescaled to HU or whatever the rescale gives) and write it to ``path``
    (``.mha``: double-precision geometry). Returns ``path``.

    Raises:
        InputError: SimpleITK cannot read the series (naming it).
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        raise InputError(f"DICOM series {series.label()} in {series.folder} cannot be read: "
                         f"{lines[-1] if lines else error}") from None
    sitk.WriteImage(image, str(path), useCompression=False)
    return path
