"""convert-btcv / convert-amos on phantoms: the paper's splits, 5 folds where nnU-Net reads them, nnU-Net's
own integrity check, bad inputs (each refused before anything is written), atomic output and reruns."""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import socket
from fractions import Fraction
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import nnunet_env, run_cli

from nnunet_poolskip.dataset_conversion import raw_dataset
from nnunet_poolskip.dataset_conversion.amos import convert_amos
from nnunet_poolskip.dataset_conversion.btcv import convert_btcv
from nnunet_poolskip.dataset_conversion.checks import ConversionError
from nnunet_poolskip.dataset_conversion.phantoms import write_phantoms
from nnunet_poolskip.dataset_conversion.splits import load_split_file, make_folds, shipped_split_file, split_cases

# Independent expectations (DESIGN.md and the TransUNet "Synapse" test list), written out on purpose.
BTCV_NAMES = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
              "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
              "left adrenal gland"]
BTCV_TEST = {f"img{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)}
BTCV_ALL = {f"img{n:04d}" for n in list(range(1, 11)) + list(range(21, 41))}
SMALL = (20, 32, 32)  # phantom grid for tests that do not plan


def check_folds(folds: List[Dict[str, List[str]]], train_ids, n_folds: int = 5) -> None:
    """5 folds whose validation sets partition the train+val cases, each fold's train being the rest."""
    everything = set(train_ids)
    assert len(folds) == n_folds
    seen = set()
    for fold in folds:
        val, train = set(fold["val"]), set(fold["train"])
        assert not val & seen and not val & train and val | train == everything
        assert len(fold["val"]) == len(val) and len(fold["train"]) == len(train)
        seen |= val
    assert seen == everything
    sizes = [len(f["val"]) for f in folds]
    assert max(sizes) - min(sizes) <= 1  # 4:1 train:val


def tree_is_empty(*roots: Path) -> bool:
    return all(not root.exists() or not any(root.iterdir()) for root in roots)


@pytest.fixture(scope="module")
def btcv10(tmp_path_factory) -> Path:
    """10 small BTCV phantoms (ids 1-10: shipped split gives 5 test, 5 train+val)."""
    out = tmp_path_factory.mktemp("btcv10") / "src"
    write_phantoms("btcv", out, cases=10, size=SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def amos_small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("amos") / "src"
    write_phantoms("amos", out, cases=18, mri_cases=6, size=SMALL, progress=False)
    return out


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """(raw root, preprocessed root) for in-process conversions."""
    raw, pre = tmp_path / "nnUNet_raw", tmp_path / "nnUNet_preprocessed"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.delenv("nnUNet_results", raising=False)
    return raw, pre


@pytest.mark.integration
def test_btcv_30_phantoms_convert_plan_and_reconvert(tmp_path):
    src = tmp_path / "btcv"
    env = nnunet_env(tmp_path / "nn")
    run_cli(["nnunet-poolskip", "synth", "--kind", "btcv", "-o", str(src), "--cases", "30", "--quiet"], env)
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(src), "--quiet"], env)
    assert "18 train+val" in proc.stdout and "12 test" in proc.stdout
    raw = tmp_path / "nn/nnUNet_raw/Dataset017_BTCV"
    pre = tmp_path / "nn/nnUNet_preprocessed/Dataset017_BTCV"
    train = BTCV_ALL - BTCV_TEST
    assert {p.name for p in (raw / "imagesTs").iterdir()} == {f"{i}_0000.nii.gz" for i in BTCV_TEST}
    assert {p.name for p in (raw / "labelsTs").iterdir()} == {f"{i}.nii.gz" for i in BTCV_TEST}
    assert {p.name for p in (raw / "imagesTr").iterdir()} == {f"{i}_0000.nii.gz" for i in train}
    assert {p.name for p in (raw / "labelsTr").iterdir()} == {f"{i}.nii.gz" for i in train}
    for case in sorted(BTCV_ALL):  # byte copies: geometry and voxels are the source's
        part = "Ts" if case in BTCV_TEST else "Tr"
        number = case[3:]
        assert filecmp.cmp(src / f"RawData/Training/img/img{number}.nii.gz", raw / f"images{part}/{case}_0000.nii.gz",
                           shallow=False)
        assert filecmp.cmp(src / f"RawData/Training/label/label{number}.nii.gz", raw / f"labels{part}/{case}.nii.gz",
                           shallow=False)
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, **{name: i for i, name in enumerate(BTCV_NAMES, start=1)}}
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 18 and meta["file_ending"] == ".nii.gz"
    folds = json.loads((raw / "splits_final.json").read_text())
    check_folds(folds, train)
    assert json.loads((pre / "splits_final.json").read_text()) == folds

    # a rerun on the complete output is a no-op
    stamp = (raw / "dataset.json").stat().st_mtime_ns
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(src), "--quiet"], env)
    assert "nothing to do" in proc.stdout and (raw / "dataset.json").stat().st_mtime_ns == stamp

    # nnU-Net's own planning and integrity check accept the data set and keep our folds
    proc = run_cli(["nnUNetv2_plan_and_preprocess", "-d", "17", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
                    "--verify_dataset_integrity"], env, timeout=600)
    assert "verify_dataset_integrity Done" in proc.stdout
    assert json.loads((pre / "splits_final.json").read_text()) == folds
    assert (pre / "nnUNetPlans.json").is_file()

    # converting after planning (another split, --overwrite) updates the folds nnUNetv2_train will read
    custom = tmp_path / "custom_split.json"
    custom_test = sorted(BTCV_ALL)[:12]
    custom.write_text(json.dumps({"test": custom_test, "train": sorted(BTCV_ALL)[12:]}))
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(src), "--split-file", str(custom), "--overwrite",
                    "--quiet"], env)
    assert "nnUNetv2_plan_and_preprocess" in proc.stdout  # told that the preprocessed data predate it
    assert {p.name for p in (raw / "labelsTs").iterdir()} == {f"{i}.nii.gz" for i in custom_test}
    new_folds = json.loads((raw / "splits_final.json").read_text())
    check_folds(new_folds, sorted(BTCV_ALL)[12:])
    assert json.loads((pre / "splits_final.json").read_text()) == new_folds
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_amos_split_is_modality_stratified(amos_small, tmp_path):
    env = nnunet_env(tmp_path / "nn")
    proc = run_cli(["nnunet-poolskip", "convert-amos", str(amos_small), "--quiet"], env)
    assert "12 train+val" in proc.stdout and "6 test" in proc.stdout
    raw = tmp_path / "nn/nnUNet_raw/Dataset218_AMOS"
    test = sorted(p.name[:-7] for p in (raw / "labelsTs").iterdir())
    train = sorted(p.name[:-7] for p in (raw / "labelsTr").iterdir())
    is_mri = lambda case: int(case[5:]) > 500  # noqa: E731
    assert sum(map(is_mri, test)) == 2 and len(test) - sum(map(is_mri, test)) == 4  # 12 CT : 6 MRI, 1/3 test
    assert sum(map(is_mri, train)) == 4 and len(train) - sum(map(is_mri, train)) == 8
    assert not set(test) & set(train) and len(test) + len(train) == 18
    folds = json.loads((raw / "splits_final.json").read_text())
    check_folds(folds, train)
    assert sorted(sum(map(is_mri, f["val"])) for f in folds) == [0, 1, 1, 1, 1]  # MRI spread over the folds
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "either_CT_or_MR"}  # as nnU-Net's Dataset219 (z-score)
    assert meta["overwrite_image_reader_writer"] == "NibabelIOWithReorient"
    assert "ZScoreNormalization" in meta["normalisation_note"] and meta["numTraining"] == 12
    assert len(meta["labels"]) == 16
    origin = {"amos_0501": "Tr", "amos_0503": "Va"}
    for case, part in origin.items():
        where = "Ts" if case in test else "Tr"
        assert filecmp.cmp(amos_small / f"images{part}/{case}.nii.gz", raw / f"images{where}/{case}_0000.nii.gz",
                           shallow=False)
    # --modality ct: CT only, CT normalisation, and the same CT test cases as with --modality all
    proc = run_cli(["nnunet-poolskip", "convert-amos", str(amos_small), "--modality", "ct", "-d", "219", "--quiet"],
                   env)
    ct_raw = tmp_path / "nn/nnUNet_raw/Dataset219_AMOS_CT"
    ct_test = sorted(p.name[:-7] for p in (ct_raw / "labelsTs").iterdir())
    assert ct_test == [c for c in test if not is_mri(c)]
    assert json.loads((ct_raw / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    # --modality mri: 6 cases leave 4 for train+val, too few for 5 folds: refused, nothing written
    proc = run_cli(["nnunet-poolskip", "convert-amos", str(amos_small), "--modality", "mri", "-d", "220"], env,
                   check=False)
    assert proc.returncode == 2 and "at least 5 train+val cases, found 4" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "nn/nnUNet_raw/Dataset220_AMOS_MRI").exists()


def test_shipped_amos_rule_gives_the_papers_120_test_cases():
    spec = load_split_file(shipped_split_file("amos"), "AMOS2022", lambda i: i.startswith("amos_"))
    cases = {f"amos_{n:04d}": ("mri" if n > 500 else "ct") for n in list(range(1, 301)) + list(range(501, 561))}
    split = split_cases(spec, cases)
    assert len(split.test) == 120 and sum(cases[c] == "mri" for c in split.test) == 20
    # independent recomputation of the documented rule: per modality, sort by SHA-256 of "2022:test:<id>"
    for modality, n_test in (("ct", 100), ("mri", 20)):
        ids = sorted((c for c in cases if cases[c] == modality),
                     key=lambda c: hashlib.sha256(f"2022:test:{c}".encode()).hexdigest())
        assert set(ids[:n_test]) == {c for c in split.test if cases[c] == modality}
    check_folds(split.folds, split.train)
    for fold in split.folds:  # 240 = 200 CT + 40 MRI: every validation set holds 40 CT and 8 MRI
        assert sum(cases[c] == "mri" for c in fold["val"]) == 8 and len(fold["val"]) == 48
    ct_only = split_cases(spec, {c: m for c, m in cases.items() if m == "ct"})
    assert ct_only.test == [c for c in split.test if cases[c] == "ct"]


def test_fold_maker_and_split_file_errors(tmp_path):
    folds = make_folds({f"img{n:04d}": "ct" for n in range(1, 19)})
    check_folds(folds, [f"img{n:04d}" for n in range(1, 19)])
    assert folds == make_folds({f"img{n:04d}": "ct" for n in range(18, 0, -1)})  # order-independent
    with pytest.raises(ConversionError, match="at least 5 train\\+val cases, found 4"):
        make_folds({f"img{n:04d}": "ct" for n in range(4)})
    valid = lambda i: i.startswith("img") and len(i) == 7  # noqa: E731
    bad_files = {
        "unknown keys \\['tests'\\]": {"tests": []},
        "in both 'test' and 'train': \\['img0001'\\]": {"test": ["img0001"], "train": ["img0001"]},
        "is for data set 'AMOS2022'": {"dataset": "AMOS2022", "test": []},
        "not BTCV case ids: \\['amos_0001'\\]": {"test": ["amos_0001"]},
        "test_fraction must be in \\[0, 1\\)": {"unlisted": {"rule": "seeded-hash", "seed": 1, "test_fraction": "3/2"}},
    }
    for message, content in bad_files.items():
        path = tmp_path / "split.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ConversionError, match=message):
            load_split_file(path, "BTCV", valid)
    path.write_text(json.dumps({"test": ["img0001"], "train": ["img0002"]}))
    spec = load_split_file(path, "BTCV", valid)
    with pytest.raises(ConversionError, match="case img0003 is in neither"):
        split_cases(spec, {"img0001": "ct", "img0002": "ct", "img0003": "ct"})
    assert Fraction(2, 5) == load_split_file(shipped_split_file("btcv"), "BTCV", valid).unlisted.test_fraction


def test_fewer_cases_than_the_shipped_split(btcv10, roots):
    raw, pre = roots
    result = convert_btcv(btcv10, progress=False)
    assert set(result.test) == {f"img{n:04d}" for n in (1, 2, 3, 4, 8)}
    assert set(result.train) == {f"img{n:04d}" for n in (5, 6, 7, 9, 10)}
    assert any("20 case(s) listed" in note for note in result.notes)
    check_folds(json.loads((pre / "Dataset017_BTCV/splits_final.json").read_text()), result.train)
    record = json.loads((raw / "Dataset017_BTCV/nnunet_poolskip_conversion.json").read_text())
    assert record["test"] == result.test and record["settings"]["dataset_id"] == 17


def _rewrite_label(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    image = change(image) or image
    sitk.WriteImage(image, str(path), useCompression=True)


def _truncate(path: Path, fraction: float = 2 / 3) -> None:
    """Cut a file to ``fraction`` of its bytes (an interrupted download); SimpleITK still reads it, as zeros."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    sitk.ReadImage(str(path))  # no error: what makes the converter's own check necessary


def _set_value(image):
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 14
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


BTCV_CORRUPTIONS = {
    "image without label: img0005": lambda s: (s / "RawData/Training/label/label0005.nii.gz").unlink(),
    "label without image: img0007": lambda s: (s / "RawData/Training/img/img0007.nii.gz").unlink(),
    "img0006: image/label shape differs": lambda s: _rewrite_label(
        s / "RawData/Training/label/label0006.nii.gz", lambda im: im[:, :, :-1]),
    "img0009: image/label spacing differs": lambda s: _rewrite_label(
        s / "RawData/Training/label/label0009.nii.gz", lambda im: im.SetSpacing([x * 1.1 for x in im.GetSpacing()])),
    "img0010: image/label origin differs": lambda s: _rewrite_label(
        s / "RawData/Training/label/label0010.nii.gz", lambda im: im.SetOrigin([x + 2 for x in im.GetOrigin()])),
    "img0005: image/label direction differs": lambda s: _rewrite_label(
        s / "RawData/Training/label/label0005.nii.gz",
        lambda im: im.SetDirection([-d for d in im.GetDirection()[:3]] + list(im.GetDirection()[3:]))),
    "img0004: .*label0004.nii.gz is truncated": lambda s: _truncate(s / "RawData/Training/label/label0004.nii.gz"),
    "img0008: .*img0008.nii.gz is truncated": lambda s: _truncate(s / "RawData/Training/img/img0008.nii.gz", 0.9),
    "img0003: label values \\{14\\} outside the label table 0..13": lambda s: _rewrite_label(
        s / "RawData/Training/label/label0003.nii.gz", _set_value),
    "duplicate case img0002 in BTCV Training/img": lambda s: sitk.WriteImage(
        sitk.ReadImage(str(s / "RawData/Training/img/img0002.nii.gz")), str(s / "RawData/Training/img/img0002.nii")),
    "not the BTCV download layout": lambda s: (s / "RawData/Training/label").rename(s / "RawData/Training/labels"),
    "unexpected file .*img0001_0000.nii.gz": lambda s: shutil.copy(s / "RawData/Training/img/img0001.nii.gz",
                                                                   s / "RawData/Training/img/img0001_0000.nii.gz"),
}


@pytest.mark.parametrize("message", list(BTCV_CORRUPTIONS))
def test_bad_btcv_input_is_refused_before_writing(message, btcv10, roots, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(btcv10, source)
    BTCV_CORRUPTIONS[message](source)
    with pytest.raises(ConversionError, match=message):
        convert_btcv(source, progress=False)
    assert tree_is_empty(*roots)


AMOS_CORRUPTIONS = {
    "duplicate case id amos_0003": lambda s: [shutil.copy(s / f"{k}Va/amos_0003.nii.gz", s / f"{k}Tr/amos_0003.nii.gz")
                                              for k in ("images", "labels")],
    "missing labelsVa": lambda s: shutil.rmtree(s / "labelsVa"),
    "lists case amos_0006 \\(validation\\) but its image/label files are missing": lambda s: [
        (s / f"{k}Va/amos_0006.nii.gz").unlink() for k in ("images", "labels")],
    "label without image: amos_0501": lambda s: (s / "imagesTr/amos_0501.nii.gz").unlink(),
    "missing dataset.json": lambda s: (s / "dataset.json").unlink(),
}


@pytest.mark.parametrize("message", list(AMOS_CORRUPTIONS))
def test_bad_amos_input_is_refused_before_writing(message, amos_small, roots, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(amos_small, source)
    AMOS_CORRUPTIONS[message](source)
    with pytest.raises(ConversionError, match=message):
        convert_amos(source, progress=False)
    assert tree_is_empty(*roots)


def test_cli_prints_one_error_line_and_writes_nothing(btcv10, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(btcv10, source)
    _rewrite_label(source / "RawData/Training/label/label0003.nii.gz", _set_value)
    env = nnunet_env(tmp_path / "nn")
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(source), "--quiet"], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("nnunet-poolskip convert-btcv: error:") and "img0003" in proc.stderr
    assert tree_is_empty(tmp_path / "nn/nnUNet_raw", tmp_path / "nn/nnUNet_preprocessed")
    env.pop("nnUNet_raw")
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(btcv10)], env, check=False)
    assert proc.returncode == 2 and "nnUNet_raw is not set" in proc.stderr


def test_failed_write_leaves_nothing(btcv10, roots, monkeypatch):
    calls = []

    def failing_copy(source, destination):
        calls.append(source)
        if len(calls) == 7:
            raise OSError("disk full (simulated)")
        shutil.copyfile(source, destination)

    monkeypatch.setattr(raw_dataset, "_copy_nifti", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        convert_btcv(btcv10, progress=False)
    assert len(calls) == 7 and tree_is_empty(*roots)


def test_a_killed_conversions_temporary_folder_is_removed_by_the_next_but_a_live_ones_stays(btcv10, tmp_path):
    """A pid above the kernel's pid_max (at most 2**22) cannot exist; this test process is alive."""
    host = socket.gethostname()
    raw = tmp_path / "nn" / "nnUNet_raw"
    stale = [raw / f".Dataset017_BTCV.tmp-{host}-99999999", raw / ".Dataset017_BTCV.tmp-99999998"]  # + old naming
    kept = [raw / f".Dataset017_BTCV.tmp-{host}-{os.getpid()}",  # a conversion running now
            raw / ".Dataset017_BTCV.tmp-elsewhere-99999999",  # from another machine: its pid says nothing here
            raw / ".Dataset017_BTCV.old-99999999",  # set aside while no data set is in place: maybe the only copy
            raw / ".Dataset018_BTCV.tmp-99999999"]  # another data set's
    for folder in stale + kept:
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "imagesTr" / "img0001_0000.nii.gz").write_bytes(b"partial")
    env = nnunet_env(tmp_path / "nn")
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(btcv10), "--quiet"], env)
    assert all(not folder.exists() for folder in stale) and all(folder.is_dir() for folder in kept)
    assert all(f"note: removed {folder}, left by a conversion whose process is gone" in proc.stdout
               for folder in stale)
    assert (raw / "Dataset017_BTCV" / "dataset.json").is_file()
    # a rerun that has nothing to convert still removes them; now that the data set is in place, the old copy too
    stale = [raw / f".Dataset017_BTCV.tmp-{host}-99999997", raw / ".Dataset017_BTCV.old-99999999"]
    stale[0].mkdir()
    proc = run_cli(["nnunet-poolskip", "convert-btcv", str(btcv10), "--quiet"], env)
    assert proc.stdout.startswith("kept ") and all(not folder.exists() for folder in stale)
    assert all(folder.is_dir() for folder in kept if folder not in stale)


def test_existing_output_rules(btcv10, roots, tmp_path):
    raw, pre = roots
    assert convert_btcv(btcv10, progress=False).written
    assert not convert_btcv(btcv10, progress=False).written  # same settings: no-op
    other = tmp_path / "other_split.json"
    other.write_text(json.dumps({"test": ["img0001", "img0002"], "train": [f"img{n:04d}" for n in range(3, 11)]}))
    with pytest.raises(ConversionError, match="other settings"):
        convert_btcv(btcv10, split_file=other, progress=False)
    result = convert_btcv(btcv10, split_file=other, overwrite=True, progress=False)
    assert result.written and result.test == ["img0001", "img0002"]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset017_BTCV"]  # no .tmp / .old folders left
    assert json.loads((pre / "Dataset017_BTCV/splits_final.json").read_text()) == result.folds
    (raw / "Dataset017_Other").mkdir()
    with pytest.raises(ConversionError, match="Dataset017_Other with the same data set id"):
        convert_btcv(btcv10, overwrite=True, progress=False)
    (raw / "Dataset017_Other").rmdir()
    (pre / "Dataset017_Older").mkdir()  # nnU-Net resolves ids through nnUNet_preprocessed too
    with pytest.raises(ConversionError, match="nnUNet_preprocessed already has Dataset017_Older"):
        convert_btcv(btcv10, overwrite=True, progress=False)
    (raw / "Dataset018_BTCV").mkdir()
    with pytest.raises(ConversionError, match="not written by this converter"):
        convert_btcv(btcv10, dataset_id=18, progress=False)
    assert not any((raw / "Dataset018_BTCV").iterdir())


def test_uncompressed_source_is_rewritten_with_the_same_voxels_and_geometry(btcv10, roots, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(btcv10, source)
    compressed = source / "RawData/Training/img/img0005.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(compressed)), str(compressed.with_name("img0005.nii")))
    compressed.unlink()
    convert_btcv(source, progress=False)
    written = roots[0] / "Dataset017_BTCV/imagesTr/img0005_0000.nii.gz"
    assert written.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the file name says
    before, after = sitk.ReadImage(str(source / "RawData/Training/img/img0005.nii")), sitk.ReadImage(str(written))
    assert before.GetPixelID() == after.GetPixelID()
    assert np.array_equal(sitk.GetArrayViewFromImage(before), sitk.GetArrayViewFromImage(after))
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(before, get)(), getattr(after, get)(), rtol=0, atol=1e-6), get
