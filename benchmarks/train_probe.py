"""Run nnU-Net's own ``nnUNetv2_train`` in this process and record what it cost: epoch times and peak memory.

    python benchmarks/train_probe.py OUT.json -- DATASET CONFIGURATION FOLD -tr TRAINER [nnUNetv2_train options]

Everything after ``--`` goes to nnU-Net's ``run_training_entry`` (the function the ``nnUNetv2_train`` console script
calls), so the run is exactly nnU-Net's. Afterwards OUT.json holds: the epoch times nnU-Net logged (from
``checkpoint_final.pth``: epoch end minus epoch start, as its "Epoch time" lines), the whole run's wall time, the
process's peak resident set (``ru_maxrss``) and, on CUDA, ``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` over the whole run (training and nnU-Net's final validation). The first epoch includes
``torch.compile``'s compilation and cuDNN's autotuning where those apply.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, nnunet_args = Path(argv[0]), argv[2:]
    import torch
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    sys.argv = ["nnUNetv2_train", *nnunet_args]
    start = time.perf_counter()
    run_training_entry()
    wall = time.perf_counter() - start

    dataset, configuration, fold = nnunet_args[:3]
    trainer = nnunet_args[nnunet_args.index("-tr") + 1] if "-tr" in nnunet_args else "nnUNetTrainer"
    plans = nnunet_args[nnunet_args.index("-p") + 1] if "-p" in nnunet_args else "nnUNetPlans"
    folder = Path(get_output_folder(dataset, trainer, plans, configuration, fold))
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging", {})
    epoch_times = [end - begin for begin, end in zip(logging.get("epoch_start_timestamps", []),
                                                      logging.get("epoch_end_timestamps", []))]
    result = {"trainer": trainer, "dataset": dataset, "configuration": configuration, "fold": fold, "plans": plans,
              "nnUNet_results": str(nnUNet_results), "command": "nnUNetv2_train " + " ".join(nnunet_args),
              "epoch_seconds": epoch_times, "train_losses": [float(x) for x in logging.get("train_losses", [])],
              "wall_seconds_including_validation": wall,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "compile": os.environ.get("nnUNet_compile", "(unset: nnU-Net compiles on CUDA)")}
    if torch.cuda.is_available():
        result.update({"gpu": torch.cuda.get_device_name(0),
                       "cuda_max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2 ** 20,
                       "cuda_max_memory_reserved_mib": torch.cuda.max_memory_reserved() / 2 ** 20})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
