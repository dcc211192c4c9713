"""rtrecon.runtime.device: device choice, precisions, the memory check (CUDA parts skip without a GPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from rtrecon.runtime.device import (
    DoesNotFitError,
    Placement,
    check_fits,
    memory_held_mb,
    parameter_bytes,
    precast_for_autocast,
    resolve_device,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_what_the_machine_has_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="rtrecon.runtime.device"):
        device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert f"picked {device}" in caplog.text


def test_bad_or_missing_devices_are_refused_by_name():
    with pytest.raises(ValueError, match="device 'gpu': choose"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1': torch .* sees no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Placement(torch.device("cpu"), "fp8")


def test_fp16_autocast_runs_as_fp32_on_a_cpu_but_bf16_is_kept():
    assert Placement.from_names("cpu", "fp16-autocast").precision == "fp32"
    bf16 = Placement.from_names("cpu", "bf16-autocast")
    assert bf16.autocast_dtype is torch.bfloat16
    with bf16.autocast():
        assert nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16
        with bf16.autocast(enabled=False):
            assert nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.float32
    with Placement(torch.device("cpu")).autocast():
        assert nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.float32


def test_parameter_bytes_counts_shared_tensors_once_and_at_a_storage_dtype():
    shared = nn.Linear(10, 10)
    model = nn.Sequential(shared, shared, nn.LayerNorm(10))
    assert parameter_bytes([model]) == (110 + 20) * 4
    assert parameter_bytes([model], torch.float16) == (110 + 20) * 2
    assert parameter_bytes([model, shared]) == (110 + 20) * 4


def test_precast_touches_only_the_layers_autocast_runs_in_half():
    model = precast_for_autocast(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Conv2d(1, 1, 1), nn.Embedding(3, 4)),
                                 torch.float16)
    assert [p.dtype for p in model.parameters()] == [torch.float16] * 2 + [torch.float32] * 2 + [torch.float16] * 2 + [torch.float32]


def test_models_that_do_not_fit_are_refused_before_moving(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    gpu = torch.device("cuda", 0)
    check_fits(gpu, 6 * 2**30, "the models")  # 6 GiB + 20 % fits in 8
    with pytest.raises(DoesNotFitError, match=r"the models need 7.0 GiB \(\+20% for activations\) but cuda:0 has 8.0 of 80.0 GiB free"):
        check_fits(gpu, 7 * 2**30, "the models")
    check_fits(torch.device("cpu"), 10**15, "anything")  # CPUs are not checked
    assert memory_held_mb(torch.device("cpu")) == 0.0


@needs_cuda
def test_placement_on_cuda_holds_memory_and_measures_its_peak():
    placement = Placement.from_names("cuda", "fp16-autocast")
    model = placement.place(nn.Linear(1024, 1024))
    assert model.weight.dtype == torch.float16 and model.weight.device.type == "cuda"
    with placement.peak_memory() as peak, placement.autocast():
        model(torch.ones(64, 1024, device=placement.device))
    assert peak["peak_mb"] >= 2.0 and memory_held_mb(placement.device) >= 2.0
    assert placement.generator(3).device.type == "cuda"
