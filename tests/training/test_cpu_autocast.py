"""CPU bfloat16 autocast (NNUNET_POOLSKIP_CPU_AUTOCAST) in every trainer of this project, its resolution by the CPU's
flags, and how the benchmark passes it on."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_poolskip.benchmark.profiles import resolve_settings
from nnunet_poolskip.benchmark.workspace import Workspace, step_environment
from nnunet_poolskip.nn import bf16_guard
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
        for method in ("train_step", "validation_step", "perform_actual_validation", "initialize"):
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


# ------------------------------------------------- torch's wrong CPU bf16 weight gradient on thin inputs
def test_which_convolutions_meet_the_bf16_weight_gradient_defect():
    unreliable = bf16_guard.bf16_conv_weight_gradient_unreliable
    assert unreliable((2, 4, 4), (3, 3, 3)) and unreliable((4, 8, 8), (5, 5, 5)) and unreliable((8, 2, 8), (3, 3, 3))
    assert not unreliable((4, 4, 4), (3, 3, 3))  # nnU-Net's demo network's smallest map
    assert not unreliable((1, 4, 4), (3, 3, 3)) and not unreliable((4, 8, 8), (1, 3, 3))
    assert not unreliable((2, 4), (3, 3))  # 2D: not affected


def _grads_under_bf16(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    out.backward(grad.to(out.dtype))
    return out.dtype, module.weight.grad.clone(), x.grad.clone()


@pytest.mark.parametrize("module, shape", [
    (torch.nn.Conv3d(16, 16, 5, padding=2), (2, 16, 4, 8, 8)),  # V-Net's down_tr64 on a 16x32x32 patch
    (torch.nn.Conv3d(32, 32, 3, padding=1), (2, 32, 2, 4, 4)),
    (torch.nn.ConvTranspose3d(32, 16, 3, padding=1), (1, 32, 2, 4, 4)),
])
def test_wrapped_convolutions_run_thin_inputs_in_float32_and_the_rest_in_bf16(module, shape):
    torch.manual_seed(0)
    x, grad = torch.randn(shape), torch.randn(shape[0], module.out_channels, *shape[2:])
    # float32 gradients of the same module, computed without autocast
    module.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    module(xr).backward(grad)
    expected_weight_grad, expected_input_grad = module.weight.grad.clone(), xr.grad.clone()
    keys = list(module.state_dict())

    assert bf16_guard.float32_where_bf16_conv_gradients_fail(module) == 1
    assert bf16_guard.float32_where_bf16_conv_gradients_fail(module) == 0  # wrapped once
    dtype, weight_grad, input_grad = _grads_under_bf16(module, x, grad)
    assert dtype == torch.float32 and list(module.state_dict()) == keys and type(module).__name__ in repr(module)
    torch.testing.assert_close(weight_grad, expected_weight_grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(input_grad, expected_input_grad, rtol=1e-4, atol=1e-4)
    # an input at least as deep as the kernel: bf16 as before
    thick = (shape[0], shape[1], 8, *shape[3:])
    dtype, weight_grad, _ = _grads_under_bf16(module, torch.randn(thick), torch.randn(shape[0], module.out_channels,
                                                                                      *thick[2:]))
    assert dtype == torch.bfloat16 and torch.isfinite(weight_grad).all()


@pytest.mark.parametrize("mode,device,wrapped", [("bf16", "cpu", 2), ("off", "cpu", 0), ("bf16", "cuda", 0)])
def test_initialize_wraps_the_network_only_under_cpu_bf16(monkeypatch, mode, device, wrapped):
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 5), torch.nn.Conv2d(16, 16, 3),
                                  torch.nn.ConvTranspose3d(16, 1, 2, stride=2))

    def fake_initialize(self):
        self.network = network

    logged = []
    monkeypatch.setattr(nnUNetTrainer, "initialize", fake_initialize)
    monkeypatch.setattr(nnUNetTrainer, "print_to_log_file", lambda self, *args, **kwargs: logged.append(args))
    trainer = object.__new__(nnUNetTrainerBaseline)
    trainer.cpu_autocast, trainer.device = mode, torch.device(device)
    trainer.initialize()
    assert sum("forward" in vars(m) for m in network.modules()) == wrapped
    assert len(logged) == (1 if wrapped else 0)
    trainer.initialize()  # nnU-Net's initialize may run again: nothing wrapped twice, nothing logged twice
    assert sum("forward" in vars(m) for m in network.modules()) == wrapped and len(logged) == (1 if wrapped else 0)


@pytest.mark.parametrize("variant", ["full", "pool_conv", "conv_skip"])
@pytest.mark.parametrize("implementation", ["lean", "reference"])
def test_pool_skip_on_a_thin_input_computes_in_float32_under_bf16(variant, implementation):
    from nnunet_poolskip.nn.pool_skip import PoolSkip3d

    torch.manual_seed(0)
    module = PoolSkip3d(32, variant=variant, implementation=implementation)
    y, upstream = torch.randn(2, 32, 2, 4, 4), torch.randn(2, 32, 2, 4, 4)

    def grads(autocast: bool):
        module.zero_grad(set_to_none=True)
        yy = y.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(yy)
        out.backward(upstream.to(out.dtype))
        return out.dtype, module.conv.weight.grad.clone(), module.conv.bias.grad.clone(), yy.grad.clone()

    dtype, *bf16_grads = grads(True)
    _, *fp32_grads = grads(False)
    assert dtype == torch.float32
    for got, expected in zip(bf16_grads, fp32_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # an input as deep as the kernel: the conv stays in bf16 (the result differs from float32's)
    thick = torch.randn(2, 32, 4, 4, 4)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = module(thick)
        assert not torch.equal(in_bf16.float(), module(thick))
