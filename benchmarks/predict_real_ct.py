"""Time and peak memory of ``nnunet-poolskip predict`` (5 folds) on a real CT at real size, beside ``nnUNetv2_predict``
on the same models.

The CT: the real whole-abdomen CT of the pinned reference files (:mod:`nnunet_poolskip.utilities.real_ct`, 3 mm)
resampled (linear) to ``--spacing`` (default 0.8 x 0.8 x 1.5 mm, a common abdominal CT) and padded with air
(-1024 HU) in-plane to at least ``--min-inplane`` voxels (default 512), as a scanner's field of view is: about
512 x 512 x 224 voxels. The models: 5 folds of ``nnUNetTrainerBaseline`` on BTCV phantoms, CPU plans, a very short
schedule (benchmarks/ensemble_cost.py's workspace; how well they are trained does not change the cost). Both tools
run on the same image file, in one process each (nnU-Net with ``-npp 1 -nps 1``), interleaved:

    ours     nnunet-poolskip predict -i ct.nii.gz -f 0 1 2 3 4            (mean of the folds' softmax, exact)
    once     nnunet-poolskip predict ... --average resample-once         (opt-in: nnU-Net's resampling cost)
    nnunet   nnUNetv2_predict -i FOLDER -f 0 1 2 3 4 -npp 1 -nps 1       (mean of the folds' logits)

Memory: the largest single process's peak resident set (``ru_maxrss``) and the peak of the process tree's summed
proportional set sizes (benchmarks/ensemble_cost.py's sampler). Wall seconds include process start and model loading.

    python benchmarks/predict_real_ct.py                          # the default size (needs ~15 GB of free memory)
    python benchmarks/predict_real_ct.py --spacing 1.6 1.6 3 --min-inplane 256   # a quarter of it per axis
    python benchmarks/predict_real_ct.py --workdir DIR            # keep (and reuse) the models and the CT
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble_cost import BIN, CONFIGURATION, TRAINER, Measurement, Setup, Workspace, machine, run_measured  # noqa: E402

DEFAULT_DATASET_ID = 976
METHODS = {"ours": "nnunet-poolskip predict (exact softmax mean)",
           "once": "nnunet-poolskip predict --average resample-once",
           "nnunet": "nnUNetv2_predict (logit mean)"}


def real_size_ct(target: Path, spacing_xyz: Sequence[float], min_inplane: int) -> Path:
    """The real CT resampled to ``spacing_xyz`` (mm) and padded in-plane with air to ``min_inplane`` voxels."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_poolskip.utilities.real_ct import reference_files

    if target.is_file():
        return target
    folder = reference_files()
    if folder is None:
        raise SystemExit("the real CT is not fetched: python -m nnunet_poolskip.utilities.real_ct fetch")
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"))
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_xyz)]
    pad = [max(0, min_inplane - n) if axis < 2 else 0 for axis, n in enumerate(size)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) - direction @ (np.array(pad) // 2 * np.array(spacing_xyz))
    size = [n + p for n, p in zip(size, pad)]
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(spacing_xyz),
                              image.GetDirection(), -1024, sitk.sitkInt16)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp_{target.name}")
    sitk.WriteImage(resampled, str(temporary), True)
    os.replace(temporary, target)
    return target


def commands(method: str, ws: Workspace, image: Path, out: Path, folds: List[str]) -> List[str]:
    common = ["-d", str(ws.setup.dataset_id), "-c", CONFIGURATION, "-tr", TRAINER, "-p", ws.setup.plans, "-f", *folds]
    if method == "nnunet":
        return [str(BIN / "nnUNetv2_predict"), "-i", str(image.parent), "-o", str(out), *common, "-device",
                ws.setup.device, "-npp", "1", "-nps", "1", "--disable_tta"]
    extra = ["--average", "resample-once"] if method == "once" else []
    return [str(BIN / "nnunet-poolskip"), "predict", "-i", str(image), "-o", str(out), *common, "--device",
            ws.setup.device, "--disable-tta", *extra]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), default=(0.8, 0.8, 1.5),
                        help="spacing of the CT in mm (default 0.8 0.8 1.5)")
    parser.add_argument("--min-inplane", type=int, default=512, help="pad in-plane to this many voxels (default 512)")
    parser.add_argument("--repeats", type=int, default=1, help="repetitions of each method (interleaved)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--workdir", default=None, help="work folder (kept, reused); default a temporary one")
    parser.add_argument("--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import SimpleITK as sitk

    args = parse_args(argv)
    started = time.perf_counter()
    temporary = None if args.workdir else tempfile.mkdtemp(prefix="predict_real_ct_")
    root = Path(args.workdir or temporary).resolve()
    setup = Setup(device=args.device, plans="nnUNetPlansCPU" if args.device == "cpu" else "nnUNetPlans",
                  dataset_id=args.dataset_id, train_size=[32, 48, 48], test_zoom=[1.0, 1.0, 1.0],
                  folds=[0, 1, 2, 3, 4], schedule=[1, 2, 1])
    try:
        root.mkdir(parents=True, exist_ok=True)
        ws = Workspace(root, setup)
        ws.check_setup()
        print(f"# predict on a real-size CT (benchmarks/predict_real_ct.py), work folder {root}", file=sys.stderr)
        ws.prepare(planning_processes=max(1, min(4, (os.cpu_count() or 1) - 1)))
        tag = "x".join(f"{s:g}" for s in args.spacing) + f"_pad{args.min_inplane}"
        image = real_size_ct(root / "ct" / tag / "realct_0000.nii.gz", args.spacing, args.min_inplane)
        ct = sitk.ReadImage(str(image))
        folds = [str(f) for f in setup.folds]
        env = ws.env()
        results: Dict[str, List[Measurement]] = {m: [] for m in args.methods}
        order = list(args.methods)
        for repetition in range(args.repeats):
            rotated = order[repetition % len(order):] + order[:repetition % len(order)]
            for method in rotated:
                out = root / "runs" / method
                shutil.rmtree(out, ignore_errors=True)
                log = root / "logs" / f"predict_{method}_{repetition}.log"
                measurement = run_measured(commands(method, ws, image, out, folds), env, log,
                                           gpu=args.device == "cuda")
                results[method].append(measurement)
                print(f"  {method} rep {repetition + 1}: {measurement.seconds:.0f} s, largest process "
                      f"{measurement.rss_largest_mib:.0f} MiB", file=sys.stderr, flush=True)
        plans = json.loads(ws.plans_file.read_text())["configurations"][CONFIGURATION]
        classes = len(json.loads((ws.model_folder / "dataset.json").read_text())["labels"])
        report = {"machine": machine(), "python": platform.python_version(),
                  "command": " ".join(["python", "benchmarks/predict_real_ct.py",
                                       *(argv if argv is not None else sys.argv[1:])]),
                  "setup": asdict(setup), "ct_size_xyz": list(ct.GetSize()), "ct_spacing_mm": list(ct.GetSpacing()),
                  "classes": classes, "plans_spacing_mm_zyx": plans["spacing"], "patch": plans["patch_size"],
                  "results": {m: [asdict(x) for x in v] for m, v in results.items()},
                  "load_average_end": list(os.getloadavg()), "total_seconds": time.perf_counter() - started}
        print("# predict on a real-size CT (benchmarks/predict_real_ct.py)")
        print("command: " + report["command"])
        for key, value in report["machine"].items():
            print(f"{key}: {value}")
        voxels = ct.GetSize()[0] * ct.GetSize()[1] * ct.GetSize()[2]
        print(f"CT: {' x '.join(map(str, ct.GetSize()))} voxels (x y z, {voxels / 1e6:.1f} M) at "
              f"{' x '.join(f'{s:g}' for s in ct.GetSpacing())} mm; {classes} classes; one float32 probability map "
              f"of it: {voxels * classes * 4 / 2 ** 30:.2f} GiB")
        print(f"models: {TRAINER}, folds {', '.join(folds)}, plans {setup.plans} (spacing "
              f"{' x '.join(f'{s:.2f}' for s in plans['spacing'])} mm z y x, patch "
              f"{'x'.join(map(str, plans['patch_size']))}), no test-time mirroring, device {args.device}")
        print("\n| method | wall s (median) | largest process peak RSS (MiB) | process tree peak PSS (MiB) |")
        print("|---|---:|---:|---:|")
        for method, runs in results.items():
            seconds = sorted(r.seconds for r in runs)[len(runs) // 2]
            print(f"| {METHODS[method]} | {seconds:.0f} | {max(r.rss_largest_mib for r in runs):.0f} | "
                  f"{max(r.pss_tree_peak_mib for r in runs):.0f} |")
        print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"total {report['total_seconds']:.0f} s")
        if args.json:
            from nnunet_poolskip.utilities.atomic import write_json_atomic

            write_json_atomic(report, args.json)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
