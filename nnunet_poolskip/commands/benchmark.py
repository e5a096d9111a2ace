"""``nnunet-poolskip benchmark``: the paper's Table 3 protocol from the raw data to the comparison table."""
from __future__ import annotations

import argparse
import os
import sys

NAME = "benchmark"
HELP = ("run the paper's Table 3 protocol (convert, plan+preprocess, train every model x fold with nnU-Net, "
        "softmax fold ensemble on the test set, evaluate, compare); resumable; --profile demo is a CPU smoke run "
        "on synthetic phantoms; --emit slurm DIR writes cluster job scripts instead of running")


def _defaults(field: str, unset: str = "nnU-Net's default") -> str:
    """``paper: X; demo: Y`` for a profile field, as the profiles set it (help texts never drift from them)."""
    from nnunet_poolskip.benchmark.profiles import PROFILES

    def shown(value) -> str:
        if value is None:
            return unset
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, (tuple, list)):
            return " ".join(map(str, value))
        return str(value)

    return "; ".join(f"{name}: {shown(getattr(profile, field))}" for name, profile in PROFILES.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_poolskip.benchmark.protocol import CONFIGURATIONS, PROTOCOLS
    from nnunet_poolskip.dataset_conversion.phantoms import ANATOMY_SCALES, DEFAULT_SIZE
    from nnunet_poolskip.utilities.cpu_precision import CPU_AUTOCAST_CHOICES

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="btcv",
                      help="btcv, amos (converted from --raw) or an nnU-Net data set already in nnUNet_raw "
                           "(DatasetXXX_Name or its id); default btcv")
    data.add_argument("--raw", metavar="SRC",
                      help="the BTCV or AMOS download folder (the demo profile makes phantoms when it is absent)")
    data.add_argument("--dataset-id", type=int, help="nnU-Net id for the converted data set (default: BTCV 17, "
                                                     "AMOS 218)")
    data.add_argument("--split-file", help="the converter's --split-file (default: the shipped paper split; 'none': no "
                                           "test split, every labelled case in the cross-validation, as nnU-Net "
                                           "Revisited; compare it with --protocol cv)")
    data.add_argument("--modality", choices=("ct", "mri", "all"), help="AMOS: convert-amos --modality")

    protocol = parser.add_argument_group("protocol (the profile's values unless given)")
    protocol.add_argument("--profile", required=True, choices=("paper", "demo"),
                          help="paper: nnU-Net defaults (1000 epochs, default plans, 5 folds, GPU); demo: smoke-scale "
                               "CPU run on synthetic phantoms (minutes); the options below override single values")
    protocol.add_argument("--protocol", choices=PROTOCOLS,
                          help="test: softmax fold ensemble on the held-out test set (the paper's); cv: every case of "
                               "the trained folds scored once by nnU-Net's final validation of the fold that held it "
                               "out (nnU-Net Revisited's); both: both tables in one report. Default: test when the "
                               "data set has test labels (btcv, amos), else cv")
    protocol.add_argument("--configuration", metavar="{" + ",".join(CONFIGURATIONS) + "}",
                          help="nnU-Net configuration every model is trained and predicted in (default 3d_fullres, "
                               "the paper's; V-Net models are 3D only; the cascade is not supported)")
    protocol.add_argument("--models", nargs="+", metavar="MODEL",
                          help="model names, comma- or space-separated (default nnunet,nnunet_poolskip,vnet,"
                               "vnet_poolskip); also nnunet_stock, nnunet_poolskip_s4, ablation_pool_skip, "
                               "ablation_conv_skip, ablation_pool_conv, vnet_poolskip_all, or a trainer class name")
    protocol.add_argument("--folds", nargs="+", type=int, metavar="F", help=f"folds ({_defaults('folds')})")
    protocol.add_argument("--seeds", nargs="+", type=int, metavar="S",
                          help="train every model x fold once per seed (independent runs seeded with "
                               "NNUNET_POOLSKIP_SEED, each seed in nnUNet_results/seed_S); the table adds the spread "
                               "between seeds; default: one unseeded run, as nnU-Net")
    protocol.add_argument("--device", choices=("cuda", "cpu"), help=_defaults("device"))
    protocol.add_argument("--num-gpus", type=int,
                          help="GPUs per training run, passed to nnUNetv2_train -num_gpus (nnU-Net's DDP)")
    protocol.add_argument("--epochs", type=int, help=f"training epochs ({_defaults('epochs', '1000, nnU-Net')})")
    protocol.add_argument("--iterations", type=int,
                          help=f"training iterations per epoch ({_defaults('iterations', '250, nnU-Net')})")
    protocol.add_argument("--val-iterations", type=int,
                          help=f"validation iterations per epoch ({_defaults('val_iterations', '50, nnU-Net')})")
    protocol.add_argument("--plans-preset",
                          help=f"derive plans with this preset of plans/ or a preset JSON file, 'none' for "
                               f"nnU-Net's own plans ({_defaults('plans_preset', 'none')})")
    protocol.add_argument("--cases", type=int,
                          help=f"number of synthetic phantoms ({_defaults('synthetic_cases', 'none, --raw needed')})")
    protocol.add_argument("--seed", type=int, help=f"seed of the synthetic phantoms ({_defaults('synth_seed')})")
    protocol.add_argument("--phantom-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                          help=f"nominal voxel grid of the synthetic phantoms "
                               f"({_defaults('synth_size', ' '.join(map(str, DEFAULT_SIZE)) + ', synth')})")
    protocol.add_argument("--phantom-anatomy", choices=sorted(ANATOMY_SCALES),
                          help=f"organ sizes of the synthetic phantoms: standard (BTCV-like) or learnable (the small "
                               f"organs grown so that a short CPU run sees them) ({_defaults('phantom_anatomy')})")
    protocol.add_argument("--cpu-autocast", choices=CPU_AUTOCAST_CHOICES,
                          help=f"CPU bfloat16 autocast for training and prediction; auto: bf16 where the CPU has "
                               f"avx512_bf16 or amx_bf16, else off; no effect on CUDA ({_defaults('cpu_autocast')})")
    protocol.add_argument("--preprocess-processes", type=int,
                          help=f"nnUNetv2_plan_and_preprocess -np and -npfp ({_defaults('preprocess_processes')})")
    tta = protocol.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None,
                     help=f"mirrored test-time inference ({_defaults('test_time_mirroring')})")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time mirroring")
    real_ct = protocol.add_mutually_exclusive_group()
    real_ct.add_argument("--real-ct", dest="real_ct", action="store_true", default=None,
                         help=f"BTCV: end by segmenting a real CT (TotalSegmentator's example, fetched by set-up) with "
                              f"the nnU-Net pair, beside TotalSegmentator's labels ({_defaults('real_ct')})")
    real_ct.add_argument("--no-real-ct", dest="real_ct", action="store_false", help="no real-CT step")
    protocol.add_argument("--nsd-tolerances", help="evaluate --nsd-tolerances (default: 1 mm for every organ)")

    run = parser.add_argument_group("running")
    run.add_argument("--output", help="results folder (default results/<dataset>, or results/<dataset>_demo)")
    run.add_argument("--work", help="folder for nnUNet_raw, nnUNet_preprocessed, nnUNet_results (default: the "
                                    "nnUNet_* variables when all three are set and the profile is paper, else "
                                    "<output>/nnunet)")
    run.add_argument("--stage", choices=("all", "prepare", "train", "finish"), default="all",
                     help="run one stage only (what the SLURM jobs do); default all")
    run.add_argument("--parallel-trainings", type=int, metavar="N",
                     help=f"CPU runs: train N folds at the same time, each with CPU count / N torch threads "
                          f"({_defaults('parallel_trainings')})")
    run.add_argument("--keep-going", action="store_true",
                     help="after a failed training go on; the table then leaves the unfinished models out and "
                          "says INCOMPLETE")
    run.add_argument("--evaluate-processes", type=int, default=min(4, os.cpu_count() or 1),
                     help="evaluate -np: test cases evaluated in parallel (default min(4, CPUs))")
    run.add_argument("--dry-run", action="store_true", help="print what would run, and the folds' states; run nothing")
    run.add_argument("--verbose", action="store_true", help="show the commands' output instead of logs/")
    run.add_argument("--emit", nargs=2, metavar=("slurm", "DIR"),
                     help="write SLURM scripts (an sbatch array of model x fold trainings, then prediction, "
                          "evaluation and the table as a dependent job) into DIR instead of running")
    run.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                     help="extra #SBATCH option for the emitted jobs, e.g. --sbatch=--partition=gpu "
                          "--sbatch=--time=48:00:00 (repeatable)")


def build_config(args: argparse.Namespace):
    """The BenchmarkConfig for parsed arguments (raises ValueError on bad combinations)."""
    import os
    from pathlib import Path

    from nnunet_poolskip.benchmark.config import BenchmarkConfig
    from nnunet_poolskip.benchmark.profiles import resolve_settings
    from nnunet_poolskip.benchmark.protocol import parse_models
    from nnunet_poolskip.benchmark.workspace import Workspace, parse_dataset

    target = parse_dataset(args.dataset, args.dataset_id)
    models = parse_models(args.models) if args.models else None
    plans_preset = args.plans_preset
    overrides = dict(device=args.device, epochs=args.epochs, iterations=args.iterations,
                     val_iterations=args.val_iterations, folds=args.folds, synthetic_cases=args.cases,
                     synth_seed=args.seed, synth_size=args.phantom_size, preprocess_processes=args.preprocess_processes,
                     test_time_mirroring=args.tta, num_gpus=args.num_gpus, seeds=args.seeds,
                     parallel_trainings=args.parallel_trainings, configuration=args.configuration,
                     phantom_anatomy=args.phantom_anatomy, cpu_autocast=args.cpu_autocast, real_ct=args.real_ct,
                     models=[m.name for m in models] if models else None)
    settings = resolve_settings(args.profile, **overrides)
    if plans_preset is not None:
        wanted = None if plans_preset.lower() == "none" else plans_preset
        if wanted != settings.plans_preset:
            settings.plans_preset = wanted
            settings.overridden.append("plans_preset")
    if models is None:
        models = parse_models(list(settings.models))
    if args.modality and target.kind != "amos":
        raise ValueError("--modality applies to --dataset amos only")
    output = Path(args.output or (Path("results") / (target.label + ("_demo" if args.profile == "demo" else ""))))
    output = output.absolute()
    if args.work:
        workspace = Workspace.under(args.work)
    else:
        from_env = Workspace.from_environment(os.environ) if args.profile == "paper" else None
        workspace = from_env or Workspace.under(output / "nnunet")
    raw = Path(args.raw).absolute() if args.raw else None
    split_file = None
    if args.split_file:
        from nnunet_poolskip.dataset_conversion.splits import NO_TEST_SPLIT, resolve_split_file

        if target.kind == "custom":
            raise ValueError(f"--split-file applies to --dataset btcv|amos (the converters); {target.label} is "
                             f"already converted: its cross-validation folds are its splits_final.json")
        split_file = resolve_split_file(args.split_file, target.kind)
        if args.split_file.lower() != NO_TEST_SPLIT:
            split_file = split_file.absolute()
        elif args.protocol in ("test", "both"):
            raise ValueError(f"--split-file none leaves no test set: --protocol {args.protocol} needs one; use "
                             f"--protocol cv")
    return BenchmarkConfig(target=target, settings=settings, models=models, output=output, workspace=workspace,
                           raw_source=raw, split_file=split_file, protocol=args.protocol,
                           modality=args.modality, stage=args.stage, keep_going=args.keep_going,
                           verbose=args.verbose, evaluate_processes=args.evaluate_processes,
                           nsd_tolerances=args.nsd_tolerances, argv=list(sys.argv))


def reproducing_arguments(config) -> list:
    """``benchmark`` arguments that reproduce ``config`` (absolute paths; no --stage, --emit, --dry-run)."""
    argv = ["--profile", config.settings.profile, "--dataset", config.target.label if config.target.kind == "custom"
            else config.target.kind, "--output", str(config.output)]
    root = config.workspace.common_root()
    if root is not None:
        argv += ["--work", str(root)]
    elif config.settings.profile != "paper":  # only the paper profile takes the folders from nnUNet_* variables
        raise ValueError("nnU-Net's folders must be <work>/nnUNet_raw, <work>/nnUNet_preprocessed and "
                         "<work>/nnUNet_results for this profile's job scripts: pass --work")
    if config.target.kind != "custom":
        argv += ["--dataset-id", str(config.target.dataset_id)]
    if config.raw_source:
        argv += ["--raw", str(config.raw_source)]
    if config.split_file:
        argv += ["--split-file", "none" if config.no_test_split else str(config.split_file)]
    if config.protocol:
        argv += ["--protocol", config.protocol]
    if config.modality:
        argv += ["--modality", config.modality]
    argv += config.settings.override_arguments()
    if "models" not in config.settings.overridden:
        argv += ["--models", ",".join(m.name for m in config.models)]
    if config.nsd_tolerances:
        argv += ["--nsd-tolerances", config.nsd_tolerances]
    if config.keep_going:
        argv.append("--keep-going")
    return argv


def run(args: argparse.Namespace) -> int:
    from nnunet_poolskip.benchmark.case_counts import check_case_counts
    from nnunet_poolskip.benchmark.config import BenchmarkError
    from nnunet_poolskip.benchmark.protocol import check_configuration, check_trainers_available
    from nnunet_poolskip.benchmark.runner import BenchmarkRunner
    from nnunet_poolskip.training import TRAINERS
    from nnunet_poolskip.utilities.atomic import check_output_path

    prefix = "nnunet-poolskip benchmark: error:"
    try:
        config = build_config(args)
        trainers = sorted(set(config.trainers().values()))
        check_configuration(config.configuration, trainers, config.models)
        check_trainers_available(trainers)
        ignoring = [t for t in trainers if t not in TRAINERS]
        if config.settings.short_schedule and ignoring:
            raise ValueError(f"trainer(s) {ignoring} ignore the short schedule (--epochs/--iterations or the "
                             f"demo profile): only nnunet-poolskip's trainers read it; use nnunet instead of "
                             f"nnunet_stock")
        if config.settings.seeds and ignoring:
            raise ValueError(f"trainer(s) {ignoring} ignore the seed (--seeds sets NNUNET_POOLSKIP_SEED, which only "
                             f"nnunet-poolskip's trainers read); use nnunet instead of nnunet_stock")
        check_case_counts(config)  # what the conversion would refuse after synthesis, refused now (and by --dry-run)
        if args.emit:
            kind, folder = args.emit
            if kind != "slurm":
                raise ValueError(f"--emit supports slurm only, got {kind!r}")
            check_output_path(folder, "--emit slurm", folder=True)
            return _emit_slurm(config, folder, args.sbatch)
        check_output_path(config.output, "--output", folder=True)
        for option, path in config.workspace.variables().items():
            check_output_path(path, "--work" if args.work else option, folder=True)
        if args.sbatch:
            raise ValueError("--sbatch applies to --emit slurm only")
        runner = BenchmarkRunner(config)
        if args.dry_run:
            runner.dry_run()
            return 0
        return runner.run()
    except (ValueError, BenchmarkError) as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2


def _emit_slurm(config, folder: str, sbatch_options) -> int:
    from nnunet_poolskip.benchmark.slurm import emit_slurm
    from nnunet_poolskip.benchmark.training_runs import planned_runs

    paths = emit_slurm(config, folder, reproducing_arguments(config), sbatch_options)
    runs = len(planned_runs(config.models, config.target.kind, config.settings.folds, config.settings.run_seeds))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    print(f"{runs} training runs as one array job; submit everything with: bash {paths[-1]}")
    return 0
