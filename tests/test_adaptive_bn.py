"""adaptive_bn: statistics equal the average over the calibration batches; nothing else changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compressor.bn import adaptive_bn
from compressor.errors import DataError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.BatchNorm1d(6, momentum=0.3),
    )


def _batches(n: int = 4, bs: int = 5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(bs, 3, 8, 8, generator=g) * 2 + 1 for _ in range(n)]


def test_statistics_are_the_average_over_the_batches() -> None:
    model = _net().eval()
    batches = _batches()
    # the exact per-batch statistics at the input of each BN
    feats2d = [model[0](x) for x in batches]
    with torch.no_grad():
        adaptive_bn(model, batches)
    bn = model[1]
    all2d = torch.cat(feats2d).detach()
    # equal-size batches: mean of batch means == exact mean over all images and positions
    torch.testing.assert_close(bn.running_mean, all2d.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    per_batch_var = torch.stack([f.detach().var(dim=(0, 2, 3), unbiased=True) for f in feats2d])
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(0), rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == len(batches)
    # and close to the pooled variance (the batches are large: 5 * 64 positions)
    torch.testing.assert_close(bn.running_var, all2d.var(dim=(0, 2, 3)), rtol=0.05, atol=0.05)


def test_single_batch_gives_exact_statistics_for_1d_and_3d() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(2, 4, 1), nn.BatchNorm3d(4), nn.Flatten(), nn.Linear(4 * 27, 5), nn.BatchNorm1d(5)
    )
    x = torch.randn(7, 2, 3, 3, 3)
    adaptive_bn(model, [x])
    h3 = model[0](x).detach()
    torch.testing.assert_close(model[1].running_mean, h3.mean(dim=(0, 2, 3, 4)))
    torch.testing.assert_close(model[1].running_var, h3.var(dim=(0, 2, 3, 4), unbiased=True))
    with torch.no_grad():
        bn3 = model[1]
        normed = nn.functional.batch_norm(h3, None, None, bn3.weight, bn3.bias, training=True, eps=bn3.eps)
        h1 = model[3](model[2](normed))
    torch.testing.assert_close(model[4].running_mean, h1.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[4].running_var, h1.var(0, unbiased=True), rtol=1e-5, atol=1e-5)


def test_old_statistics_are_reset_not_blended() -> None:
    model = _net()
    bn = model[1]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(100.0)
    batches = _batches(2)
    adaptive_bn(model, batches)
    first = bn.running_mean.clone()
    bn.running_mean.fill_(-50.0)
    adaptive_bn(model, batches)
    torch.testing.assert_close(bn.running_mean, first)
    assert bn.running_mean.abs().max() < 50


def test_weights_frozen_and_flags_restored() -> None:
    model = _net()
    model.train()
    model[3].eval()  # a dropout the user left in eval mode stays so
    before = copy.deepcopy(model.state_dict())
    training = {n: m.training for n, m in model.named_modules()}
    adaptive_bn(model, [(x, torch.zeros(len(x))) for x in _batches()])  # (inputs, targets) pairs
    after = model.state_dict()
    for k, v in before.items():
        if "running_" in k or "num_batches_tracked" in k:
            continue
        assert torch.equal(v, after[k]), f"{k} changed"
    assert {n: m.training for n, m in model.named_modules()} == training
    assert model[1].momentum == 0.1 and model[7].momentum == 0.3
    assert all(p.grad is None for p in model.parameters())


def test_dropout_stays_off_during_calibration() -> None:
    # with dropout active the statistics of the BN after it would be random; twice the same run
    # must give identical statistics
    model = _net()
    model.train()
    batches = _batches()
    adaptive_bn(model, batches)
    s1 = model[7].running_var.clone()
    adaptive_bn(model, batches)
    torch.testing.assert_close(model[7].running_var, s1, rtol=0, atol=0)


def test_sync_batchnorm_and_momentum_restored_after_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4, momentum=0.2)).eval()
    x = torch.randn(6, 3, 4, 4)
    adaptive_bn(model, [x])
    h = model[0](x).detach()
    torch.testing.assert_close(model[1].running_mean, h.mean(dim=(0, 2, 3)))
    with pytest.raises(RuntimeError):
        adaptive_bn(model, [torch.randn(2, 5, 4, 4)])  # wrong channel count
    assert model[1].momentum == 0.2 and not model[1].training


def test_no_batches_is_a_data_error() -> None:
    with pytest.raises(DataError):
        adaptive_bn(_net(), [])
    with pytest.raises(DataError):
        adaptive_bn(_net(), ["not a tensor"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    batches = _batches()
    cpu = adaptive_bn(_net().eval(), batches, device="cpu")
    gpu = adaptive_bn(_net().eval(), batches, device="cuda")
    assert next(gpu.parameters()).is_cuda
    torch.testing.assert_close(gpu[1].running_mean.cpu(), cpu[1].running_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu[1].running_var.cpu(), cpu[1].running_var, rtol=1e-4, atol=1e-4)


def test_public_name_stays_the_function_after_importing_the_module() -> None:
    import compressor
    import compressor.bn  # noqa: F401
    from compressor.evaluate import adaptive_bn as via_evaluate

    assert via_evaluate is adaptive_bn
    model = _net().eval()
    out = compressor.adaptive_bn(model, _batches(1))
    assert out is model and int(model[1].num_batches_tracked) == 1
