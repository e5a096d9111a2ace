"""CPU bfloat16 autocast (NNUNET_POOLSKIP_CPU_AUTOCAST) in every trainer of this project, its resolution by the CPU's
flags, and how the benchmark passes it on."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_poolskip.benchmark.profiles import resolve_settings
from nnunet_poolskip.benchmark.workspace import Workspace, step_environment
from nnunet_poolskip.training import TRAINERS
from nnunet_poolskip.training.base import nnUNetTrainerBaseline
from nnunet_poolskip.utilities import cpu_precision
from nnunet_poolskip.utilities.cpu_precision import (
    CPU_AUTOCAST_VARIABLE,
    cpu_autocast_from_environment,
    cpu_bf16_flags,
    resolve_cpu_autocast,
)

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_variable_is_validated():
    assert cpu_autocast_from_environment({}) == "off"
    assert cpu_autocast_from_environment({CPU_AUTOCAST_VARIABLE: ""}) == "off"
    assert cpu_autocast_from_environment({CPU_AUTOCAST_VARIABLE: "off"}) == "off"
    assert cpu_autocast_from_environment({CPU_AUTOCAST_VARIABLE: "BF16"}) == "bf16"
    for bad in ("fp16", "auto", "1"):
        with pytest.raises(ValueError, match=f"{CPU_AUTOCAST_VARIABLE} must be 'bf16' or 'off'"):
            cpu_autocast_from_environment({CPU_AUTOCAST_VARIABLE: bad})


def test_auto_follows_the_cpu_flags(tmp_path):
    amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    amx.write_text(AMX_CPU)
    avx2.write_text(AVX2_CPU)
    assert cpu_bf16_flags(amx) == ("avx512_bf16", "amx_bf16")
    assert cpu_bf16_flags(avx2) == () and cpu_bf16_flags(tmp_path / "absent") == ()
    assert resolve_cpu_autocast("auto", "cpu", amx)[0] == "bf16"
    mode, reason = resolve_cpu_autocast("auto", "cpu", avx2)
    assert mode == "off" and "neither avx512_bf16 nor amx_bf16" in reason
    assert resolve_cpu_autocast("bf16", "cpu", avx2)[0] == "bf16"  # asked for: done, with a warning in the reason
    assert resolve_cpu_autocast("off", "cpu", amx)[0] == "off"
    assert resolve_cpu_autocast("bf16", "cuda", amx)[0] == "off"  # CUDA keeps nnU-Net's own autocast
    with pytest.raises(ValueError, match="CPU autocast must be one of off, bf16, auto"):
        resolve_cpu_autocast("fp16", "cpu", amx)


def test_every_trainer_runs_its_steps_through_the_mixin():
    """The autocast wraps nnU-Net's methods in nnUNetTrainerBaseline; no trainer of ours may bypass it."""
    for name, cls in TRAINERS.items():
        assert issubclass(cls, nnUNetTrainerBaseline), name
        for method in ("train_step", "validation_step", "perform_actual_validation"):
            assert getattr(cls, method) is getattr(nnUNetTrainerBaseline, method), (name, method)


def fake_trainer(monkeypatch, mode: str, device: str):
    """A baseline trainer whose nnU-Net methods only record the autocast state they run under."""
    seen = []

    def record(self, *args, **kwargs):
        enabled = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        return {}

    for method in ("train_step", "validation_step", "perform_actual_validation"):
        monkeypatch.setattr(nnUNetTrainer, method, record)
    trainer = object.__new__(nnUNetTrainerBaseline)  # no plans needed: only the overrides run
    trainer.cpu_autocast, trainer.device, trainer.mirrored_validation = mode, torch.device(device), True
    return trainer, seen


@pytest.mark.parametrize("mode,device,expected", [("bf16", "cpu", torch.bfloat16), ("off", "cpu", None),
                                                  ("bf16", "cuda", None)])
def test_train_validation_and_final_validation_run_under_cpu_autocast(monkeypatch, mode, device, expected):
    trainer, seen = fake_trainer(monkeypatch, mode, device)
    trainer.train_step({})
    trainer.validation_step({})
    trainer.perform_actual_validation()
    assert seen == [expected] * 3
    assert not torch.is_autocast_enabled("cpu")  # and nothing leaks out


def test_trainer_reads_the_variable_at_start_up(monkeypatch):
    """The variable reaches every trainer class through nnUNetTrainerBaseline.__init__; a bad value fails there."""
    def fake_init(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        self.device, self.local_rank = device, 0

    monkeypatch.setattr(nnUNetTrainer, "__init__", fake_init)
    monkeypatch.setattr(nnUNetTrainer, "print_to_log_file", lambda self, *args, **kwargs: None)
    for variable in ("NNUNET_POOLSKIP_EPOCHS", "NNUNET_POOLSKIP_ITERS", "NNUNET_POOLSKIP_VAL_ITERS",
                     "NNUNET_POOLSKIP_THREADS", "NNUNET_POOLSKIP_SEED", "NNUNET_POOLSKIP_VAL_MIRRORING"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(CPU_AUTOCAST_VARIABLE, "bf16")
    trainer = nnUNetTrainerBaseline({}, "3d_fullres", 0, {}, torch.device("cpu"))
    assert trainer.cpu_autocast == "bf16"
    monkeypatch.setenv(CPU_AUTOCAST_VARIABLE, "fp16")
    with pytest.raises(ValueError, match=CPU_AUTOCAST_VARIABLE):
        nnUNetTrainerBaseline({}, "3d_fullres", 0, {}, torch.device("cpu"))


def test_benchmark_sets_the_variable_where_the_cpu_has_bf16(monkeypatch, tmp_path):
    """demo (auto): bf16 on a CPU with avx512_bf16/amx_bf16 only; paper: never, and a leftover variable is removed;
    the resolved mode is part of the protocol key (a run on another precision is not resumed)."""
    ws = Workspace.under(tmp_path)
    base = {"PATH": "/usr/bin", CPU_AUTOCAST_VARIABLE: "bf16"}
    for text, expected in ((AMX_CPU, "bf16"), (AVX2_CPU, None)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(text)
        monkeypatch.setattr(cpu_precision, "CPUINFO", cpuinfo)
        demo = resolve_settings("demo")
        env, _ = step_environment(base, ws, demo, "train")
        assert env.get(CPU_AUTOCAST_VARIABLE) == expected
        assert demo.protocol_key().get("cpu_autocast") == expected
        env, _ = step_environment(base, ws, demo, "plan")
        assert CPU_AUTOCAST_VARIABLE not in env
        paper = resolve_settings("paper")
        env, _ = step_environment(base, ws, paper, "train")
        assert CPU_AUTOCAST_VARIABLE not in env and "cpu_autocast" not in paper.protocol_key()
    with pytest.raises(ValueError, match="--cpu-autocast must be one of off, bf16, auto"):
        resolve_settings("demo", cpu_autocast="fp16")


def test_predict_continue_never_mixes_precisions(tmp_path):
    """predict --continue: an output folder made in another precision is refused (its record names the setting)."""
    from nnunet_poolskip.inference.output_folder import CONTINUE, NEW, OutputFolder
    from nnunet_poolskip.inference.softmax_ensemble import PredictionInputError

    settings = {"folds": [0, 1], "use_mirroring": False, "cpu_autocast": "off"}
    first = OutputFolder(tmp_path, settings, NEW)
    assert first.plan(["case1"], ".nii.gz", False) == ["case1"]
    first.start({}, "cpu")
    first.case_started("case1", [tmp_path / "case1.nii.gz"])
    (tmp_path / "case1.nii.gz").write_bytes(b"made in float32")
    first.case_done("case1")
    with pytest.raises(PredictionInputError, match=r"cpu_autocast: 'off' then, 'bf16' now"):
        OutputFolder(tmp_path, {**settings, "cpu_autocast": "bf16"}, CONTINUE).plan(["case1"], ".nii.gz", False)
    assert OutputFolder(tmp_path, settings, CONTINUE).plan(["case1"], ".nii.gz", False) == []
