"""vitfast.runtime: what "auto" and each dtype or device name mean, the same for train, eval and bench."""

import pytest
import torch

from vitfast import choices, runtime

CPU = torch.device("cpu")


def test_dtype_names_come_from_the_torch_free_list():
    assert tuple(runtime.DTYPES) == choices.DTYPE_NAMES
    assert runtime.DTYPES["bf16"] is torch.bfloat16 and runtime.DTYPES["fp32"] is torch.float32


def test_auto_means_bf16_on_cuda_and_fp32_on_cpu():
    assert runtime.resolve_dtype("auto", CPU) is torch.float32
    assert runtime.resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert runtime.amp_dtype_for("auto", CPU) is None
    assert runtime.amp_dtype_for("auto", torch.device("cuda")) is torch.bfloat16
    assert runtime.amp_dtype_for("fp32", CPU) is None


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_autocast_dtypes_need_cuda(name):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        runtime.amp_dtype_for(name, CPU)


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose auto, bf16, fp16, fp32"):
        runtime.resolve_dtype("fp8", CPU)
    with pytest.raises(ValueError, match="choose bf16, fp16, fp32"):
        runtime.amp_dtype_for("half", CPU)
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        runtime.resolve_device("gpu0")
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        runtime.resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_to_use_the_cpu():
    with pytest.raises(ValueError, match="use --device cpu"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("auto") == CPU


def test_autocast_is_nothing_without_an_amp_dtype():
    x = torch.randn(4, 4)
    with runtime.autocast(CPU, None):
        assert (x @ x).dtype is torch.float32
    with runtime.autocast(CPU, torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16


def test_one_process_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.init_runtime()
    assert (rt.rank, rt.world, rt.is_main) == (0, 1, True)
    assert rt.device == runtime.default_device()
