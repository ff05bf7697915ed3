"""Denoising processes: with an exact denoiser every sampler lands on the data, at any step count."""

import pytest
import torch

from ditpolicy.policies.processes import DDPMProcess, FlowMatchingProcess, make_process

TARGET = torch.tensor([[0.5, -0.25, 0.75]]).expand(4, 3).reshape(2, 2, 3)  # a point mass x0


def oracle_flow(x, t):
    """Velocity of the straight path to the point mass: (x_t - x0) / t."""
    return (x - TARGET) / t.view(-1, 1, 1)


def oracle_ddpm(process):
    def fn(x, t):
        k = (t * process.num_train_steps - 1).round().long()
        abar = process.alphas_cumprod[k].float().view(-1, 1, 1)
        eps = (x - abar.sqrt() * TARGET) / (1 - abar).sqrt()
        return eps if process.prediction == "epsilon" else TARGET.expand_as(x)
    return fn


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_flow_sampler_reaches_the_data(solver, steps):
    process = FlowMatchingProcess(solver=solver)
    out = process.sample(oracle_flow, torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)), steps)
    torch.testing.assert_close(out, TARGET, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 100])
def test_ddim_sampler_reaches_the_data(prediction, steps):
    process = DDPMProcess(num_train_steps=100, prediction=prediction)
    out = process.sample(oracle_ddpm(process), torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)), steps)
    # abar at the last training step is 2e-7: dividing by its root costs float32 a few 1e-4
    torch.testing.assert_close(out, TARGET, atol=5e-4, rtol=0)


def test_training_pairs_follow_their_definitions():
    x0 = torch.randn(64, 16, 4)
    gen = torch.Generator().manual_seed(1)
    x_t, t, target = FlowMatchingProcess().training_pair(x0, gen)
    eps = target + x0
    torch.testing.assert_close(x_t, (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps)
    assert t.min() >= 0 and t.max() <= 1

    ddpm = DDPMProcess(num_train_steps=100, prediction="epsilon")
    x_t, t, eps = ddpm.training_pair(x0, gen)
    k = (t * 100 - 1).round().long()
    abar = ddpm.alphas_cumprod[k].float().view(-1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-5, rtol=1e-5)
    # the cosine schedule runs from almost clean to almost pure noise
    assert ddpm.alphas_cumprod[0] > 0.999 and ddpm.alphas_cumprod[-1] < 1e-3
    # the network sees t = (k + 1) / T for integer steps k in [0, T)
    assert torch.allclose(t * 100, (t * 100).round(), atol=1e-4) and t.min() >= 0.01 and t.max() <= 1.0


def test_unknown_process_settings_are_named():
    with pytest.raises(ValueError, match="unknown denoising process 'edm2'"):
        make_process("edm2")
    with pytest.raises(ValueError, match="prediction must be one of"):
        DDPMProcess(prediction="v")
    with pytest.raises(ValueError, match="solver must be one of"):
        FlowMatchingProcess(solver="rk4")
