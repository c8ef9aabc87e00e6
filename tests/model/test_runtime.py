"""Where the model runs: autocast by precision, and each GPU's own peak for MFU."""

import pytest
import torch

from model import runtime


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12), ("NVIDIA L40S", 362e12),
    ("NVIDIA L4", 121e12), ("NVIDIA B200", 2.25e15), ("NVIDIA GeForce RTX 4090", 165e12),
])
def test_each_gpu_gets_its_own_bf16_peak(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert runtime.peak_flops(0.0, torch.device("cuda", 0)) == peak


def test_an_unknown_gpu_is_measured_and_a_configured_peak_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    monkeypatch.setattr(runtime, "measure_matmul_flops", lambda device: 123.0)
    assert runtime.peak_flops(0.0, torch.device("cuda", 0)) == 123.0
    assert runtime.peak_flops(5e14, torch.device("cuda", 0)) == 5e14
    assert runtime.peak_flops(-1.0, torch.device("cuda", 0)) is None


def test_precision_picks_the_autocast():
    cpu = torch.device("cpu")
    with runtime.autocast_for(cpu)():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32, "auto: fp32 on CPU"
    with runtime.autocast_for(cpu, "bf16")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with runtime.autocast_for(torch.device("cuda"), "fp32")():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
