"""What the completeness check of an image file costs, next to reading the file with SimpleITK.

Writes one CT-sized volume (default 512 x 512 x 200 voxels, int16, CT-like values: a smooth ramp from -1000 to
400 HU plus noise of 30 HU) with SimpleITK as ``.nii.gz`` into a temporary folder, then times, alternating
repetition by repetition so that a change of machine load hits both alike:

    read    SimpleITK.ReadImage + GetArrayViewFromImage (what conversion and evaluation do anyway)
    check   nnunet_poolskip.utilities.image_integrity.check_image_file_complete (whole gzip stream, CRC,
            NIfTI size)

and prints the median of each (seconds) and their ratio check / read. One CPU thread for SimpleITK, as the
check uses one.

    python benchmarks/nifti_check_cost.py                     # 512 512 200, 5 repetitions
    python benchmarks/nifti_check_cost.py --size 512 512 100 --repetitions 9
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def write_volume(path: Path, size_xyz, seed: int = 0) -> None:
    """A CT-like int16 volume of ``size_xyz`` voxels (x, y, z), 0.8 x 0.8 x 2.5 mm, as compressed NIfTI."""
    import SimpleITK as sitk

    x, y, z = size_xyz
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1000, 400, x, dtype=np.float32)[None, None, :]
    array = np.empty((z, y, x), np.int16)
    for k in range(z):  # slice by slice: no float copy of the whole volume
        array[k] = (ramp[0] + rng.normal(0, 30, (y, x)).astype(np.float32)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path), useCompression=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 200), metavar=("X", "Y", "Z"),
                        help="voxels (default 512 512 200)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed repetitions of each (default 5)")
    args = parser.parse_args(argv)

    import SimpleITK as sitk

    from nnunet_poolskip.utilities.image_integrity import check_image_file_complete

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    def read(path: Path) -> None:
        image = sitk.ReadImage(str(path))
        sitk.GetArrayViewFromImage(image).sum(dtype=np.int64)  # touch the voxels

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.nii.gz"
        write_volume(path, args.size)
        voxel_mb = int(np.prod(args.size)) * 2 / 1e6
        print(f"file: {'x'.join(map(str, args.size))} int16 ({voxel_mb:.0f} MB of voxels), .nii.gz "
              f"{path.stat().st_size / 1e6:.1f} MB; {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs")
        read(path), check_image_file_complete(path)  # warm the page cache and imports
        times = {"read": [], "check": []}
        for _ in range(args.repetitions):
            for name, function in (("read", read), ("check", check_image_file_complete)):
                start = time.perf_counter()
                function(path)
                times[name].append(time.perf_counter() - start)
    read_s, check_s = statistics.median(times["read"]), statistics.median(times["check"])
    print(f"SimpleITK read:      {read_s:.3f} s (median of {args.repetitions})")
    print(f"completeness check:  {check_s:.3f} s (median of {args.repetitions})")
    print(f"ratio check / read:  {check_s / read_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
