"""Denoising processes against exact denoisers.

A point mass checks that every sampler lands on the data at any step count and start level.
A Gaussian mixture, whose exact velocity / noise prediction is known in closed form, checks
more: one Euler step returns the data mean, Euler converges at first order and Heun at
second, and many-step samples have the mixture's mode weights and widths, which a sampler
on a wrong schedule or time grid would not produce.
"""

import math

import pytest
import torch

from ditpolicy.policies.processes import DDPMProcess, FlowMatchingProcess, make_process

TARGET = torch.tensor([[0.5, -0.25, 0.75]]).expand(4, 3).reshape(2, 2, 3)  # a point mass x0

# a 1-D Gaussian mixture, drawn independently for every element of a (B, H, A) tensor
MEANS, STDS, WEIGHTS = torch.tensor([-1.0, 1.5]), torch.tensor([0.3, 0.5]), torch.tensor([0.3, 0.7])


def flow(solver="euler"):
    return FlowMatchingProcess(solver=solver, time_sampling="uniform")


def ddpm(prediction="epsilon", clip=1.0, steps=100):
    return DDPMProcess(num_train_steps=steps, prediction=prediction, eta=0.0, clip_sample=clip)


def noise(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def oracle_flow_point(x, t):
    """Velocity of the straight path to the point mass: (x_t - x0) / t."""
    return (x - TARGET) / t.reshape(*t.shape, *[1] * (x.dim() - t.dim()))


def mixture_posterior(x, scale, var_noise):
    """Responsibilities and per-component posterior terms for x = scale * x0 + noise."""
    m = scale[..., None] * MEANS.to(x)                               # (..., K)
    v = scale[..., None] ** 2 * STDS.to(x) ** 2 + var_noise[..., None]
    log_r = torch.log(WEIGHTS.to(x)) - 0.5 * (x[..., None] - m) ** 2 / v - 0.5 * torch.log(v)
    return torch.softmax(log_r, dim=-1), m, v


def oracle_flow_mixture(x, t):
    """Exact velocity E[eps - x0 | x_t] of rectified flow for the mixture."""
    t = t.reshape(*t.shape, *[1] * (x.dim() - t.dim())).expand_as(x).to(x)
    r, m, v = mixture_posterior(x, 1 - t, t**2)
    x0 = MEANS.to(x) + (1 - t)[..., None] * STDS.to(x) ** 2 / v * (x[..., None] - m)
    eps = t[..., None] / v * (x[..., None] - m)
    return (r * (eps - x0)).sum(-1)


def cosine_abar(j: torch.Tensor, T: int) -> torch.Tensor:
    """abar at level index j (0 = clean) of the squared-cosine schedule, written from its
    closed form f(j/T) / f(0) (independent of the process's table); the last step's beta is
    capped at 0.999 as in the reference schedule."""
    def f(u):
        return torch.cos((torch.as_tensor(u, dtype=torch.float64) + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = f(j.double() / T) / f(0.0)
    capped = f((T - 1) / T) / f(0.0) * 0.001
    return torch.where(j >= T, capped, abar)


def oracle_ddpm_mixture(process):
    T = process.num_train_steps

    def fn(x, t):
        j = (t * T).round().long()
        a = cosine_abar(j, T).reshape(*t.shape, *[1] * (x.dim() - t.dim())).expand_as(x).to(x)
        r, m, v = mixture_posterior(x, a.sqrt(), 1 - a)
        eps = (1 - a).sqrt()[..., None] / v * (x[..., None] - m)
        return (r * eps).sum(-1)
    return fn


def oracle_ddpm_point(process):
    def fn(x, t):
        j = process.level_index(t)
        abar = process.abar_table[j].to(x).reshape(*t.shape, *[1] * (x.dim() - t.dim()))
        eps = (x - abar.sqrt() * TARGET) / (1 - abar).sqrt()
        return eps if process.prediction == "epsilon" else TARGET.expand_as(x).clone()
    return fn


def mode_summary(samples: torch.Tensor) -> tuple[float, float, float]:
    """(weight of the mode at +1.5, std around -1, std around +1.5) of 1-D samples."""
    x = samples.flatten().double()
    high = x > 0.25
    return float(high.double().mean()), float(x[~high].std()), float(x[high].std())


# ---------------------------------------------------------------- point mass, every step count
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_flow_sampler_reaches_the_data(solver, steps):
    out, heads = flow(solver).sample(oracle_flow_point, torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)),
                                     1.0, steps)
    torch.testing.assert_close(out, TARGET, atol=1e-5, rtol=0)
    assert heads == {}


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 100])
def test_ddim_sampler_reaches_the_data(prediction, steps):
    process = ddpm(prediction)
    out, _ = process.sample(oracle_ddpm_point(process), torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)),
                            1.0, steps)
    # abar at the last training step is 2e-7: dividing by its root costs float32 a few 1e-4
    torch.testing.assert_close(out, TARGET, atol=5e-4, rtol=0)


@pytest.mark.parametrize("make", [flow, ddpm], ids=["flow", "ddpm"])
@pytest.mark.parametrize("t_start", [0.3, 0.62])
def test_sampling_from_an_intermediate_level_reaches_the_data(make, t_start):
    process = make()
    fn = oracle_flow_point if process.name == "flow" else oracle_ddpm_point(process)
    t = torch.full((2,), t_start)
    x_init = process.add_noise(TARGET, t, torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(1)))
    for steps in (1, 2, 5):
        out, _ = process.sample(fn, x_init, t_start, steps)
        torch.testing.assert_close(out, TARGET, atol=5e-4, rtol=0)


@pytest.mark.parametrize("make", [flow, ddpm], ids=["flow", "ddpm"])
def test_tokens_at_level_zero_are_held_fixed(make):
    """Per-token start levels: a clean prefix (level 0) is returned bit for bit while the
    rest of the chunk is denoised from its own level."""
    process = make()
    fn = oracle_flow_point if process.name == "flow" else oracle_ddpm_point(process)
    prefix = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])          # differs from TARGET
    t_start = torch.tensor([[0.0, 1.0], [0.0, 0.5]])                   # (B, H): token 0 clean
    x_init = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(2))
    x_init[:, 0] = prefix
    x_init[1, 1] = process.add_noise(TARGET[1:2, 1:2], torch.tensor([[0.5]]), x_init[1:2, 1:2])[0, 0]
    seen = []
    out, _ = process.sample(lambda x, t: (seen.append(t.clone()), fn(x, t))[1], x_init, t_start, 4)
    assert torch.equal(out[:, 0], prefix)
    torch.testing.assert_close(out[:, 1], TARGET[:, 1], atol=5e-4, rtol=0)
    assert all(t.shape == (2, 2) and (t[:, 0] == 0).all() for t in seen)


def test_noise_levels_visited_follow_the_schedule():
    seen = []

    def spy(fn):
        return lambda x, t: (seen.append(t[0].item()), fn(x, t))[1]

    x = torch.randn(1, 2, 3)
    flow().sample(spy(oracle_flow_point), x, 1.0, 4)
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])
    seen.clear()
    flow().sample(spy(oracle_flow_point), x, 0.5, 4)
    assert seen == pytest.approx([0.5, 0.375, 0.25, 0.125])
    seen.clear()
    process = ddpm()
    process.sample(spy(oracle_ddpm_point(process)), x, 1.0, 4)  # DDIM: T .. 1 in equal strides
    assert seen == pytest.approx([1.0, 0.67, 0.34, 0.01])
    seen.clear()
    process.sample(spy(oracle_ddpm_point(process)), x, 0.41, 3)
    assert seen == pytest.approx([0.41, 0.21, 0.01])


# ---------------------------------------------------------------- Gaussian mixture
def test_one_euler_step_from_noise_returns_the_data_mean():
    out, _ = flow().sample(oracle_flow_mixture, noise(64, 2, 3), 1.0, 1)
    torch.testing.assert_close(out, torch.full_like(out, float((WEIGHTS * MEANS).sum())), atol=1e-6, rtol=0)


def test_euler_is_first_order_and_heun_second_order():
    x1 = noise(256, 4, 2)
    reference, _ = flow("heun").sample(oracle_flow_mixture, x1, 1.0, 4000)

    def error(solver, steps):
        out, _ = flow(solver).sample(oracle_flow_mixture, x1, 1.0, steps)
        return float((out - reference).abs().mean())

    euler_ratio = error("euler", 20) / error("euler", 40)     # halving the step: error / 2
    heun_ratio = error("heun", 20) / error("heun", 40)        # halving the step: error / 4
    assert 1.8 < euler_ratio < 2.2, euler_ratio
    assert 3.6 < heun_ratio < 4.6, heun_ratio
    assert error("heun", 20) < 0.1 * error("euler", 20)


@pytest.mark.parametrize("sampler", ["flow-heun", "ddim"])
def test_many_step_samples_have_the_mixture_modes(sampler):
    x = noise(20_000, 1, 1, seed=3)
    if sampler == "flow-heun":
        out, _ = flow("heun").sample(oracle_flow_mixture, x, 1.0, 60)
    else:
        process = ddpm(clip=0.0)
        out, _ = process.sample(oracle_ddpm_mixture(process), x, 1.0, 100)
    weight_high, std_low, std_high = mode_summary(out)
    assert abs(weight_high - 0.7) < 0.015
    assert abs(std_low - 0.3) < 0.03 and abs(std_high - 0.5) < 0.04


def test_a_wrong_ddim_schedule_is_caught():
    """The same DDIM sampler with a schedule that disagrees with the denoiser's (a linear
    abar instead of the cosine one) no longer produces the mixture: the check above can fail."""
    process = ddpm(clip=0.0)
    process.abar_table = torch.cat([torch.ones(1), torch.linspace(0.9999, 1e-4, 100)]).double()
    out, _ = process.sample(oracle_ddpm_mixture(process), noise(20_000, 1, 1, seed=3), 1.0, 100)
    weight_high, std_low, std_high = mode_summary(out)
    assert abs(weight_high - 0.7) > 0.015 or abs(std_low - 0.3) > 0.03 or abs(std_high - 0.5) > 0.04


def test_the_ddpm_table_is_the_cosine_schedule():
    process = ddpm()
    j = torch.arange(101)
    torch.testing.assert_close(process.abar_table, cosine_abar(j, 100), atol=1e-12, rtol=1e-9)


# ---------------------------------------------------------------- training pairs, settings
def test_training_pairs_follow_their_definitions():
    x0 = torch.randn(64, 16, 4)
    gen = torch.Generator().manual_seed(1)
    x_t, t, target = flow().training_pair(x0, generator=gen)
    eps = target + x0
    torch.testing.assert_close(x_t, (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * eps)
    assert t.shape == (64,) and t.min() >= 0 and t.max() <= 1

    process = ddpm()
    x_t, t, eps = process.training_pair(x0, generator=gen)
    k = (t * 100 - 1).round().long()
    abar = process.alphas_cumprod[k].float().view(-1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-5, rtol=1e-5)
    # the cosine schedule runs from almost clean to almost pure noise
    assert process.alphas_cumprod[0] > 0.999 and process.alphas_cumprod[-1] < 1e-3
    # the network sees t = (k + 1) / T for integer steps k in [0, T)
    assert torch.allclose(t * 100, (t * 100).round(), atol=1e-4) and t.min() >= 0.01 and t.max() <= 1.0


@pytest.mark.parametrize("make", [flow, ddpm], ids=["flow", "ddpm"])
def test_per_token_training_levels(make):
    process = make()
    x0 = torch.randn(8, 6, 3)
    t = torch.rand(8, 6)
    t[:, :2] = 0.0                                        # a clean prefix
    x_t, t_out, target = process.training_pair(x0, t=t)
    assert torch.equal(t_out, t)
    torch.testing.assert_close(x_t[:, :2], x0[:, :2], atol=0, rtol=0)
    assert not torch.allclose(x_t[:, 2:], x0[:, 2:])
    # the loss can leave the clean prefix out
    masked = process.loss_terms(target, target + 1.0, mask=(t > 0))["diffusion"]
    assert masked.item() == pytest.approx(1.0)
    pred = target.clone()
    pred[:, :2] += 10.0                                   # wrong only on the masked tokens
    assert process.loss_terms(pred, target, mask=(t > 0))["diffusion"].item() == pytest.approx(0.0)


def test_unknown_process_settings_are_named():
    with pytest.raises(ValueError, match="unknown denoising process 'edm2' in policy.process.name"):
        make_process({"name": "edm2"})
    with pytest.raises(ValueError, match=r"policy.process: unknown option\(s\) \['solvr'\] for the 'flow'"):
        make_process({"name": "flow", "solvr": "heun", "time_sampling": "uniform"})
    with pytest.raises(ValueError, match="prediction must be one of"):
        DDPMProcess(num_train_steps=10, prediction="v", eta=0.0, clip_sample=1.0)
    with pytest.raises(ValueError, match="solver must be one of"):
        FlowMatchingProcess(solver="rk4", time_sampling="uniform")
