"""``predict`` on real scans as users hold them: a real CT as one NIfTI file, a scanner-native DICOM series (also as
DICOM SEG), an MRI; and every bad input of those forms, refused before any network runs.

The real scans are the reference files of the pinned TotalSegmentator 2.18.0 sdist (``real_scans`` in conftest.py).
Their label maps are that model's output, not ground truth: the tests check the pipeline, not accuracy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk
from scan_fixtures import phantom_ct_model  # noqa: F401  (a fixture)

from nnunet_poolskip.cli import main
from nnunet_poolskip.dataset_conversion.labels import BTCV_LABELS
from nnunet_poolskip.inference.inputs import InputError, find_dicom_series, resolve_inputs

# TotalSegmentator 2.x label values (totalsegmentator/map_to_binary.py of the pinned sdist, tasks "total" and
# "total_mr") of the 13 BTCV organs, as BTCV values: how the shipped label maps are compared with the BTCV model.
TS_TOTAL_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
TS_TOTAL_MR_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 12: 5, 5: 6, 6: 7, 23: 8, 24: 9, 25: 10, 7: 11, 8: 12, 9: 13}


def map_labels(array: np.ndarray, mapping: Dict[int, int]) -> np.ndarray:
    out = np.zeros(array.shape, np.uint8)
    for source, target in mapping.items():
        out[array == source] = target
    return out


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def read_series_files(files) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    return reader.Execute()


def assert_same_geometry(output: sitk.Image, image: sitk.Image) -> None:
    """Size exactly; spacing, origin (mm) and direction to NIfTI's float32 precision (the label map is a NIfTI)."""
    assert output.GetSize() == image.GetSize()
    np.testing.assert_allclose(output.GetSpacing(), image.GetSpacing(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(output.GetOrigin(), image.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(output.GetDirection(), image.GetDirection(), rtol=0, atol=1e-6)


def copy_series_with_uids(source: Path, target: Path, files: List[str] = None, series: str = "series",
                          description: str = None, shift_mm: Dict[str, float] = None) -> Path:
    """A copy of the shipped series with the UIDs its anonymisation emptied (study, series, instance, SOP class),
    made up deterministically; pixel data and every other attribute as shipped. Optionally only some ``files``, another
    SeriesDescription, or slices moved along z by ``shift_mm[file]``."""
    import pydicom
    from pydicom.uid import generate_uid

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if files is not None and path.name not in files:
            continue
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
        dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[series])
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=[series, path.name])
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if description is not None:
            dataset.SeriesDescription = description
        if shift_mm and path.name in shift_mm:
            position = [float(v) for v in dataset.ImagePositionPatient]
            dataset.ImagePositionPatient = [position[0], position[1], position[2] + shift_mm[path.name]]
        dataset.save_as(target / path.name)
    return target


@pytest.mark.integration
def test_predict_real_ct_dicom_series_and_mri(phantom_ct_model, real_scans, tmp_path, monkeypatch, capsys):  # noqa: F811
    import highdicom as hd
    import pydicom

    model = phantom_ct_model
    for key, value in model.env.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    dicom = real_scans / "example_ct_dicom"
    ct, mri = real_scans / "example_ct.nii.gz", real_scans / "example_mr_sm.nii.gz"

    # 1. as shipped, in one call: the whole-abdomen CT (int32, sform-only header), the MRI and the DICOM series
    #    (20 slices of 512 x 512, JPEG 2000): one NIfTI each, named after the file or folder, in its geometry
    out = tmp_path / "out"
    assert main(model.predict_args(ct, mri, dicom, output=out)) == 0, capsys.readouterr().err
    inputs = {"example_ct": sitk.ReadImage(str(ct)), "example_mr_sm": sitk.ReadImage(str(mri)),
              "example_ct_dicom": read_series(dicom)}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{name}.nii.gz" for name in inputs)
    outputs = {}
    for name, image in inputs.items():
        output = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert_same_geometry(output, image)
        outputs[name] = output
        assert set(np.unique(sitk.GetArrayFromImage(output)).tolist()) <= set(range(14))
    assert not list(out.glob(".tmp*"))

    # 2. the shipped series was anonymised without UIDs: a SEG cannot reference it, and says so before any work
    refused = tmp_path / "refused"
    assert main(model.predict_args(dicom, output=refused, extra=["--output-type", "dicom-seg"])) == 2
    err = capsys.readouterr().err
    assert "has no StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID" in err
    assert not refused.exists()

    # 3. four slices of the series with UIDs made up: NIfTI and DICOM SEG; the SEG's frames are the NIfTI's voxels
    names = sorted(p.name for p in dicom.iterdir())
    with_uids = copy_series_with_uids(dicom, tmp_path / "series" / "four_slices", files=names[8:12])
    seg_out = tmp_path / "seg"
    assert main(model.predict_args(with_uids, output=seg_out, extra=["--output-type", "dicom-seg"])) == 0
    label_image = sitk.ReadImage(str(seg_out / "four_slices.nii.gz"))
    assert_same_geometry(label_image, read_series(with_uids))
    label_map = sitk.GetArrayFromImage(label_image)
    seg_file = seg_out / "four_slices.seg.dcm"
    raw = pydicom.dcmread(seg_file)
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in find_dicom_series(with_uids).files]
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert raw.StudyInstanceUID == sources[0].StudyInstanceUID
    assert [(s.SegmentNumber, s.SegmentLabel) for s in raw.SegmentSequence] == sorted(BTCV_LABELS.items())
    algorithm = raw.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "nnunet-poolskip"
    assert "nnUNetTrainerPoolSkip" in str(algorithm.AlgorithmParameters)
    seg = hd.seg.segread(seg_file)
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               combine_segments=True, skip_overlap_checks=True)
    assert label_map.any()
    np.testing.assert_array_equal(frames, label_map)  # slice i of both is source file i; rows and columns as stored

    # 4. evaluate against the shipped label maps, their TotalSegmentator values mapped to BTCV's here.
    #    example_seg.nii.gz labels example_ct_sm.nii.gz: the last 30 slices of the CT's voxels (its header repeats the
    #    whole CT's origin), so our CT label map's last 30 slices are compared with it on its grid. The DICOM series'
    #    label map is stored on the series' grid flipped in y: brought onto the series' own grid first.
    references, predictions = tmp_path / "references", tmp_path / "predictions"
    references.mkdir()
    predictions.mkdir()
    ct_small = sitk.ReadImage(str(real_scans / "example_ct_sm.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct_small), sitk.GetArrayFromImage(inputs["example_ct"])[-30:])
    ct_prediction = sitk.GetImageFromArray(sitk.GetArrayFromImage(outputs["example_ct"])[-30:])
    ct_prediction.CopyInformation(ct_small)
    sitk.WriteImage(ct_prediction, str(predictions / "example_ct.nii.gz"))
    shutil.copy(out / "example_mr_sm.nii.gz", predictions / "example_mr_sm.nii.gz")
    shutil.copy(out / "example_ct_dicom.nii.gz", predictions / "example_ct_dicom.nii.gz")
    shipped_dicom_labels = sitk.ReadImage(str(real_scans / "example_seg_dicom.nii.gz"))
    on_series_grid = sitk.Resample(shipped_dicom_labels, inputs["example_ct_dicom"], sitk.Transform(),
                                   sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_series_grid),
                                  sitk.GetArrayFromImage(shipped_dicom_labels)[:, ::-1, :])  # the y flip, exactly
    for name, labels, mapping in (("example_ct", sitk.ReadImage(str(real_scans / "example_seg.nii.gz")),
                                   TS_TOTAL_TO_BTCV),
                                  ("example_mr_sm", sitk.ReadImage(str(real_scans / "example_seg_mr.nii.gz")),
                                   TS_TOTAL_MR_TO_BTCV),
                                  ("example_ct_dicom", on_series_grid, TS_TOTAL_TO_BTCV)):
        mapped = sitk.GetImageFromArray(map_labels(sitk.GetArrayFromImage(labels), mapping))
        mapped.CopyInformation(labels)
        sitk.WriteImage(mapped, str(references / f"{name}.nii.gz"))
    summary_file = tmp_path / "summary.json"
    assert main(["evaluate", str(references), str(predictions), "--dataset-json", str(out / "dataset.json"),
                 "-o", str(summary_file), "-np", "1", "--no-progress"]) == 0
    summary = json.loads(summary_file.read_text())
    assert sorted(c["case"] for c in summary["per_case"]) == ["example_ct", "example_ct_dicom", "example_mr_sm"]
    liver = next(value for value, name in BTCV_LABELS.items() if name == "liver")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(references / "example_ct_dicom.nii.gz"))) == liver
    predicted = sitk.GetArrayFromImage(outputs["example_ct_dicom"]) == liver
    assert reference.sum() > 10000  # the series shows the liver
    dicom_case = next(c for c in summary["per_case"] if c["case"] == "example_ct_dicom")
    expected = 2 * (reference & predicted).sum() / (reference.sum() + predicted.sum())
    assert dicom_case["dice"][str(liver)] == pytest.approx(expected, abs=1e-9)


def test_dicom_seg_of_the_real_series_reads_back(real_scans, tmp_path):
    """The shipped TotalSegmentator label map of the DICOM series, as BTCV labels, through write_dicom_seg (BINARY and
    LABELMAP): highdicom gives back the same voxels for every source slice."""
    import highdicom as hd
    import pydicom

    from nnunet_poolskip.inference.dicom_seg import Algorithm, write_dicom_seg

    series_folder = copy_series_with_uids(real_scans / "example_ct_dicom", tmp_path / "series")
    series = find_dicom_series(series_folder)
    image = read_series(series_folder)
    shipped = sitk.ReadImage(str(real_scans / "example_seg_dicom.nii.gz"))
    labels = map_labels(sitk.GetArrayFromImage(sitk.Resample(shipped, image, sitk.Transform(),
                                                            sitk.sitkNearestNeighbor)), TS_TOTAL_TO_BTCV)
    assert len(np.unique(labels)) >= 4  # several organs in these 20 slices
    algorithm = Algorithm(version="0", trainer="T", plans="P", configuration="3d_fullres", folds="0", dataset="D")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.files]
    for kind in ("BINARY", "LABELMAP"):
        path = write_dicom_seg(labels, series.files, BTCV_LABELS, tmp_path / f"{kind}.seg.dcm", algorithm, kind)
        seg = hd.seg.segread(path)
        assert seg.SegmentationType == kind
        frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                   skip_overlap_checks=True)
        np.testing.assert_array_equal(frames, labels)
    with pytest.raises(ValueError, match=r"label values \[20\] have no name"):
        write_dicom_seg(np.full_like(labels, 20), series.files, BTCV_LABELS, tmp_path / "x.seg.dcm", algorithm)
    assert not (tmp_path / "x.seg.dcm").exists()


# --- bad input, refused before any network runs ------------------------------------------------------------------

def resolve(*inputs, n_channels=1, dimension=3, series_uid=None):
    with resolve_inputs(inputs, ".nii.gz", n_channels, dimension, series_uid) as resolved:
        return {name: case for name, case in resolved.cases.items()}


def test_single_files_of_every_format_are_named_after_themselves(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    for name in ("a.nii.gz", "b.nii", "c.nrrd", "d.mha", "e.mhd"):
        sitk.WriteImage(image, str(tmp_path / name))
    cases = resolve(*(tmp_path / n for n in ("a.nii.gz", "b.nii", "c.nrrd", "d.mha", "e.mhd")))
    assert {name: c.output_ending for name, c in cases.items()} == {n: ".nii.gz" for n in "abcde"}
    assert cases["e"].files == [tmp_path / "e.mhd"]
    (tmp_path / "other").mkdir()
    sitk.WriteImage(image, str(tmp_path / "other" / "a.nrrd"))
    with pytest.raises(InputError, match="would both be written as a.nii.gz"):
        resolve(tmp_path / "a.nii.gz", tmp_path / "other" / "a.nrrd")


def test_bad_image_files(tmp_path):
    import nibabel

    four_d = tmp_path / "four_d.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 5, 4, 2), np.int16), np.eye(4)), four_d)
    with pytest.raises(InputError, match=r"four_d.nii.gz: the image is 4D \(6 x 5 x 4 x 2 voxels"):
        resolve(four_d)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(flat))
    with pytest.raises(InputError, match=r"flat.nrrd: the image is 2D \(6 x 5 voxels\) but the model's "
                                         r"configuration is 3D"):
        resolve(flat)
    assert resolve(flat, dimension=2)["flat"].files == [flat]  # a 2D configuration takes it
    colour = tmp_path / "colour.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(colour))
    with pytest.raises(InputError, match="3 components per voxel"):
        resolve(colour)
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4 * 50 * 60, dtype=np.int16).reshape(4, 50, 60)), str(good))
    with pytest.raises(InputError, match="the model takes 2 channels per case: give -i an nnU-Net-style folder"):
        resolve(good, n_channels=2)
    truncated = tmp_path / "truncated.nii.gz"
    data = good.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=f"{truncated} is truncated"):
        resolve(good, truncated)
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"not an image")
    with pytest.raises(InputError, match=f"cannot read image header of {garbage}"):
        resolve(garbage)
    with pytest.raises(InputError, match="input .*missing.nii.gz does not exist"):
        resolve(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    with pytest.raises(InputError, match="no input images in .*empty: it holds neither nnU-Net-style"):
        resolve(tmp_path / "empty")


def test_bad_dicom_series(real_scans, tmp_path):
    source = real_scans / "example_ct_dicom"
    names = sorted(p.name for p in source.iterdir())

    two = tmp_path / "two"
    copy_series_with_uids(source, two, files=names[:3], series="A", description="CT Body 3.0")
    copy_series_with_uids(source, two, files=names[3:7], series="B", description="CT Lung")
    with pytest.raises(InputError) as error:
        resolve(two)
    message = str(error.value)
    assert f"{two} holds 2 DICOM series; choose one with --series-uid" in message
    assert "(CT Body 3.0, 3 slices)" in message and "(CT Lung, 4 slices)" in message
    uid_b = next(item.split(" ")[0] for item in message.split(": ", 1)[1].split("; ") if "CT Lung" in item)
    with resolve_inputs([two], ".nii.gz", 1, 3, uid_b) as resolved:
        case = resolved.cases["two"]
        assert len(case.series.files) == 4 and case.series.description == "CT Lung"
        image = sitk.ReadImage(str(case.files[0]))  # the series as one image, for nnU-Net's reader
        assert image.GetSize() == (512, 512, 4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                      sitk.GetArrayFromImage(read_series_files(case.series.files)))
    assert not case.files[0].exists()  # temporaries removed on close
    with pytest.raises(InputError, match="--series-uid 1.2.3 is not in"):
        resolve(two, series_uid="1.2.3")

    missing = copy_series_with_uids(source, tmp_path / "missing", files=names[:8] + names[9:])
    with pytest.raises(InputError, match=r"are 4.000 mm apart, the others 2.000 mm \(a missing slice\?\)") as error:
        resolve(missing)
    assert names[7] in str(error.value) and names[9] in str(error.value)  # the slices on either side of the gap
    uneven = copy_series_with_uids(source, tmp_path / "uneven", shift_mm={names[5]: 0.6})
    with pytest.raises(InputError, match=r"mm apart, the others 2.000 mm \(.*\); 2 uneven gap\(s\) in 20 slices"):
        resolve(uneven)

    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    cut = truncated / names[10]
    cut.write_bytes(cut.read_bytes()[:60000])
    with pytest.raises(InputError, match=rf"{cut} is an image of DICOM series .* but it cannot be read"):
        resolve(truncated)


def test_dicom_seg_refused_for_image_files_before_any_work(real_scans, tmp_path, capsys, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    model = tmp_path / "nnUNet_results" / "Dataset924_Fake" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (model / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [8, 8, 8]}}}))
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                    "labels": {"background": 0, "liver": 1}}))
    out = tmp_path / "out"
    common = ["-o", str(out), "-d", "Dataset924_Fake", "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-f", "0",
              "--device", "cpu"]
    ct = real_scans / "example_ct.nii.gz"
    assert main(["predict", "-i", str(ct), *common, "--output-type", "dicom-seg"]) == 2
    assert f"--output-type dicom-seg is for DICOM series input (a folder of DICOM files); {ct} is an image file" \
        in capsys.readouterr().err
    assert not out.exists()
    from nnunet_poolskip.inference.inputs import configuration_dimension

    assert configuration_dimension(model / "plans.json", "3d_fullres") == 3
    with pytest.raises(InputError, match="configuration '2d' is not in .*plans.json \\(it has 3d_fullres\\)"):
        configuration_dimension(model / "plans.json", "2d")
