"""The mixture-of-denoising-experts family: noise-only routing, expert caching, balance loss."""

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.config import compose, policy_config
from ditpolicy.datasets import Normalizer
from ditpolicy.datasets.stats import array_stats
from ditpolicy.policies import DiffusionPolicy, MoDEDenoiser, Policy, PolicySpec
from ditpolicy.policies.moe import load_balance
from ditpolicy.policies.train import Trainer

MODE = ["policy/denoiser=mode", "policy.d_model=32", "policy.denoiser.n_layers=2", "policy.denoiser.n_heads=2",
        "policy.horizon=6", "policy.n_action_steps=3"]


def mode_policy(*overrides) -> DiffusionPolicy:
    torch.manual_seed(0)
    spec = PolicySpec.from_config(policy_config([*MODE, *overrides]), {"state": [5]}, [], 2, ["a", "b"])
    rng = np.random.default_rng(0)
    stats = {"state": array_stats(rng.normal(size=(50, 5))), "action": array_stats(rng.normal(size=(50, 2)))}
    policy = DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).eval()
    with torch.no_grad():   # open the branches that start closed, so every part shapes the output
        for block in policy.denoiser.blocks:
            block.experts.w2.normal_(std=0.2)
            if block.shared is not None:
                block.shared.w2.normal_(std=0.2)
            block.self_attn.out.weight.normal_(std=0.2)
            if block.cross_attn is not None:
                block.cross_attn.out.weight.normal_(std=0.2)
            block.router.weight.normal_(std=1.0)
            if block.ada is not None:
                block.ada[-1].weight.normal_(std=0.2)
        if policy.denoiser.final_ada is not None:
            policy.denoiser.final_ada[-1].weight.normal_(std=0.2)
        policy.denoiser.action_out.weight.normal_(std=0.2)
    return policy


BATCH = {"state": torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1)), "task_id": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize("mode", ["eager", "trace"])
@pytest.mark.parametrize("process,shared,obs,conditioning,modulation,attention,obs_input", [
    ("flow", 0.0, False, "token", "joint", "cross", False), ("ddpm", 0.0, False, "token", "joint", "cross", False),
    ("flow", 0.75, True, "token", "joint", "cross", False), ("flow", 0.75, True, "adaln", "joint", "cross", False),
    ("flow", 0.0, True, "adaln", "split", "prefix", False), ("ddpm", 0.0, False, "adaln", "joint", "cross", True),
    ("flow", 0.0, False, "token", "joint", "prefix", True), ("flow", 0.75, False, "adaln", "joint", "prefix", False)])
def test_cached_experts_match_the_uncached_mixture(mode, process, shared, obs, conditioning, modulation, attention,
                                                   obs_input):
    options = (f"policy/process={process}", f"policy.denoiser.shared_ratio={shared}",
               f"policy.denoiser.obs_context={obs}", f"policy.denoiser.conditioning={conditioning}",
               f"policy.denoiser.modulation={modulation}", f"policy.denoiser.attention={attention}",
               f"policy.denoiser.obs_input={obs_input}")
    cached = mode_policy(*options).set_inference_mode(mode)
    uncached = mode_policy(*options, "policy.denoiser.cache=false").set_inference_mode(mode)
    assert (cached.denoiser.blocks[0].shared is None) == (shared == 0)
    for steps in (1, 4, 10):
        a = cached.predict_action_chunks(BATCH, steps, generator=torch.Generator().manual_seed(2))
        b = uncached.predict_action_chunks(BATCH, steps, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert len(cached.denoiser._fused) > 0 and len(uncached.denoiser._fused) == 0
    # the level's own adaLN is folded into the cached weights; with the observation in it, it is not
    folded = "folded" in cached.denoiser.step_inputs(torch.full((3,), 0.5))
    assert folded == (conditioning == "adaln" and not obs)
    # the cache holds one entry per visited level: 1 + 4 + 10 levels, some shared
    levels = {round(t, 7) for t in cached.denoiser.routes}
    assert len(cached.denoiser._fused) == len(levels) <= 16
    if mode == "trace":     # the whole-sampler graphs hold the fused experts: no routing runs in them
        graphs = {key: str(g.graph) for key, g in cached.fast_step._graphs.items() if key[0] == "sample"}
        assert len(graphs) == 3 and not any("topk" in g for g in graphs.values())
        assert all("topk" in str(g.graph) for key, g in uncached.fast_step._graphs.items() if key[0] == "sample")


@pytest.mark.parametrize("obs_context,conditioning,modulation", [
    (False, "token", "joint"), (True, "token", "joint"), (True, "adaln", "joint"), (True, "adaln", "split")])
def test_routing_depends_only_on_the_noise_level(obs_context, conditioning, modulation):
    policy = mode_policy(f"policy.denoiser.obs_context={obs_context}", f"policy.denoiser.conditioning={conditioning}",
                         f"policy.denoiser.modulation={modulation}")
    denoiser = policy.denoiser
    seen = []
    original = denoiser.route
    # record each route's router probabilities (R, E): equal probabilities, equal experts and gates
    denoiser.route = lambda logits: (lambda r: (seen.append(r[2].clone()), r)[1])(original(logits))
    prepared = denoiser.prepare(policy.condition(BATCH))
    other = denoiser.prepare(policy.condition({**BATCH, "state": BATCH["state"] * 5 + 1}))
    t = torch.tensor([0.2, 0.7, 0.7])
    for x, cond in ((torch.randn(3, 6, 2), prepared), (torch.randn(3, 6, 2) * 3, other)):
        denoiser(x, t, cond)
    first, second = seen[: len(seen) // 2], seen[len(seen) // 2:]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(a[1], a[2]) for a in first)            # same level, same routing
    denoiser(torch.randn(3, 6, 2), torch.tensor([0.95, 0.7, 0.7]), prepared)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, seen[-2:]))   # level changed
    # a token router, for comparison, routes each token from its content
    token = mode_policy("policy.denoiser.router=token", "policy.denoiser.conditioning=token").denoiser
    seen.clear()
    token.route = lambda logits: (lambda r: (seen.append(r[0].clone()), r)[1])(MoDEDenoiser.route(token, logits))
    token(torch.randn(3, 6, 2), t, token.prepare(torch.randn(3, 5, 32)))
    assert seen[0].shape == (3 * 7, token.top_k)


def test_load_balance_is_one_for_uniform_routing_and_grows_with_collapse():
    n, e = 64, 4
    uniform_probs = torch.full((n, e), 1 / e)
    uniform_idx = torch.stack([torch.arange(n) % e, (torch.arange(n) + 1) % e], dim=1)
    assert load_balance(uniform_probs, uniform_idx, e).item() == pytest.approx(1.0)
    skewed = torch.tensor([0.55, 0.35, 0.05, 0.05]).expand(n, e)
    collapsed = torch.tensor([0.97, 0.01, 0.01, 0.01]).expand(n, e)
    both = torch.tensor([[0, 1]]).expand(n, 2)
    values = [load_balance(p, both, e).item() for p in (uniform_probs, skewed, collapsed)]
    assert values[0] < values[1] < values[2] and values[2] > 1.9


def test_the_cache_invalidates_after_an_optimizer_step_and_after_loading():
    policy = mode_policy()
    denoiser = policy.denoiser
    t = torch.full((3,), 0.5)
    before = denoiser.step_inputs(t)
    assert denoiser.step_inputs(t) is before                       # served from the cache
    optimizer = torch.optim.SGD(denoiser.parameters(), lr=0.5)
    for p in denoiser.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    after = denoiser.step_inputs(t)
    assert after is not before and not torch.equal(after["experts"][0][1], before["experts"][0][1])
    other = mode_policy()
    for assign in (False, True):            # weights copied in place, then parameters replaced
        stale = other.denoiser.step_inputs(t)
        shifted = {k: v + 0.1 if v.is_floating_point() else v for k, v in policy.state_dict().items()}
        other.load_state_dict(shifted, assign=assign)
        loaded = other.denoiser.step_inputs(t)
        assert loaded is not stale and other.denoiser.step_inputs(t) is loaded
        c = other.denoiser.noise_embedding(t[:1])
        idx, gates, _ = other.denoiser.route(other.denoiser.blocks[0].router(c))
        w13, w2 = other.denoiser.blocks[0].experts.fuse(idx[0], gates[0])
        torch.testing.assert_close(loaded["experts"][0][0], w13)
        torch.testing.assert_close(loaded["experts"][0][1], w2)
        policy = other


def test_a_split_modulation_caches_the_levels_share_and_prepares_the_observations():
    """modulation=split: adaLN = ada(c) + ada's weights on silu(obs). The level's share is
    cached with the fused experts (and goes stale with the modulation's weights), the
    observation's is computed once per chunk; the two add up to the uncached forward's."""
    policy = mode_policy("policy.denoiser.conditioning=adaln", "policy.denoiser.obs_context=true",
                         "policy.denoiser.modulation=split")
    denoiser = policy.denoiser
    t = torch.full((3,), 0.4)
    step = denoiser.step_inputs(t)
    block = denoiser.blocks[1]
    torch.testing.assert_close(step["mods"][1], block.ada(denoiser.noise_embedding(t[:1])))
    prepared = denoiser.prepare(policy.condition(BATCH))
    pooled = denoiser.cond_pool(policy.condition(BATCH).mean(dim=1))
    torch.testing.assert_close(prepared["obs_mods"][1], torch.nn.functional.silu(pooled) @ block.ada[-1].weight.T)
    assert "pooled" not in prepared and prepared["obs_final"].shape == (3, 2 * 32)
    x = torch.randn(3, 6, 2)
    torch.testing.assert_close(denoiser(x, t, prepared, step), denoiser(x, t, prepared), atol=1e-5, rtol=1e-5)
    moved = denoiser(x, t, denoiser.prepare(policy.condition({**BATCH, "state": BATCH["state"] + 1})), step)
    assert not torch.allclose(moved, denoiser(x, t, prepared, step))       # the observation modulates
    with torch.no_grad():
        block.ada[-1].bias.add_(0.1)                                      # not a routing weight
    assert denoiser.step_inputs(t) is not step
    with pytest.raises(ValueError, match="modulation=split needs policy.denoiser.conditioning=adaln"):
        mode_policy("policy.denoiser.modulation=split", "policy.denoiser.conditioning=token")


def test_a_folded_cache_goes_stale_with_the_layers_it_folds_into():
    """adaLN from the level alone is folded into the attention's and output layers' weights: a
    change to one of those layers (not a routing weight) rebuilds the level's entry."""
    policy = mode_policy("policy.denoiser.conditioning=adaln")
    denoiser = policy.denoiser
    t = torch.full((3,), 0.3)
    step = denoiser.step_inputs(t)
    assert "folded" in step and denoiser.step_inputs(t) is step
    x, prepared = torch.randn(3, 6, 2), denoiser.prepare(policy.condition(BATCH))
    for layer in (denoiser.blocks[0].self_attn.q, denoiser.action_out):
        with torch.no_grad():
            layer.weight.add_(0.1)
        fresh = denoiser.step_inputs(t)
        assert fresh is not step
        torch.testing.assert_close(denoiser(x, t, prepared, fresh), denoiser(x, t, prepared), atol=1e-5, rtol=1e-5)
        step = fresh


def test_obs_input_adds_the_observation_to_the_action_tokens_and_keeps_the_cache_folded():
    """obs_input: the action tokens' input bias is the positions plus the projected mean of the
    condition, prepared once per chunk; the level's modulation stays foldable, and the folded
    cached step reads the observation through that bias."""
    policy = mode_policy("policy.denoiser.conditioning=adaln", "policy.denoiser.obs_input=true")
    denoiser = policy.denoiser
    cond = policy.condition(BATCH)
    prepared = denoiser.prepare(cond)
    bias = denoiser.position + denoiser.obs_input(cond.mean(dim=1))[:, None]            # (B, H, D)
    torch.testing.assert_close(prepared["input_bias"], bias)
    x, t = torch.randn(3, 6, 2), torch.full((3,), 0.7)
    step = denoiser.step_inputs(t)
    assert "folded" in step
    torch.testing.assert_close(denoiser(x, t, prepared, step), denoiser(x, t, prepared), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for block in denoiser.blocks:                                   # close the cross-attention's path
            block.cross_attn.out.weight.zero_()
    plain = denoiser(x, t, prepared, denoiser.step_inputs(t))
    moved = denoiser(x, t, denoiser.prepare(policy.condition({**BATCH, "state": BATCH["state"] + 1})),
                     denoiser.step_inputs(t))
    assert not torch.allclose(moved, plain)                             # the observation still reaches the output
    assert "obs_input" not in dict(mode_policy("policy.denoiser.conditioning=adaln").denoiser.named_children())


def test_prefix_attention_reads_the_condition_in_the_self_attention():
    """attention=prefix: no cross-attention; each block's prepared keys/values are its
    self-attention's projection of the condition, and the condition reaches the output."""
    policy = mode_policy("policy.denoiser.conditioning=adaln", "policy.denoiser.attention=prefix")
    denoiser = policy.denoiser
    assert all(b.cross_attn is None and b.norm_cross is None for b in denoiser.blocks)
    assert not any("cross_attn" in name for name, _ in denoiser.named_parameters())
    cond = policy.condition(BATCH)
    prepared = denoiser.prepare(cond)
    torch.testing.assert_close(prepared["kv"][1][0], denoiser.blocks[1].self_attn.keys_values(cond)[0])
    assert prepared["kv"][0][0].shape == (3, 2, cond.shape[1], 16)
    x, t = torch.randn(3, 6, 2), torch.full((3,), 0.6)
    other = denoiser.prepare(policy.condition({**BATCH, "state": BATCH["state"] + 1}))
    assert not torch.allclose(denoiser(x, t, prepared), denoiser(x, t, other))
    with pytest.raises(ValueError, match="policy.denoiser.attention must be one of"):
        mode_policy("policy.denoiser.attention=joint")


def test_training_logs_the_balance_term_and_routing_per_level():
    policy = mode_policy().train()
    batch = {**BATCH, "action": torch.randn(3, 6, 2)}
    loss, logs = policy.compute_loss(batch)
    assert "loss/load_balance" in logs and logs["loss/load_balance"] >= 1.0 - 1e-6
    assert logs["loss"] == pytest.approx(logs["loss/diffusion"] + 0.01 * logs["loss/load_balance"], rel=1e-5)
    shares = [v for k, v in logs.items() if k.startswith("routing/")]
    assert shares and all(0 <= v <= 1 for v in shares)
    loss.backward()
    assert policy.denoiser.blocks[0].router.weight.grad.abs().sum() > 0   # the router learns through the gates


def test_a_mode_checkpoint_round_trips_and_plots_its_routing(tmp_path):
    store = tmp_path / "reach.zarr"
    write_reaching_store(store)
    overrides = [o for o in TINY_POLICY if "denoiser" not in o]
    trainer = Trainer(compose("train", [f"dataset.path={store}", f"run_dir={tmp_path / 'run'}", *overrides,
                                        "policy/denoiser=mode", "policy.denoiser.n_layers=2",
                                        "policy.denoiser.n_heads=2", "train.steps=6", "train.save_every=6"]))
    trainer.run()
    trained = trainer.ema_policy()
    loaded = Policy.from_checkpoint(tmp_path / "run", device="cpu")
    assert isinstance(loaded.denoiser, MoDEDenoiser) and loaded.denoiser.cache
    batch = {"state": torch.randn(2, 2, 4), "task_id": torch.tensor([0, 1])}
    a = trained.predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    b = loaded.predict_action_chunks(batch, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    paths = loaded.denoiser.write_diagnostics(tmp_path / "eval")
    assert [p.name for p in paths] == ["expert_routing.png"] and paths[0].stat().st_size > 2000


@pytest.mark.parametrize("conditioning", ["token", "adaln"])
def test_every_branch_learns_from_the_first_step(conditioning):
    """Freshly built (no branch opened by hand): within three steps the gradient reaches the
    experts' output weights, both attentions' output and, with adaLN, the modulation; a closed
    gate on a closed branch would leave both at zero for good."""
    torch.manual_seed(0)
    spec = PolicySpec.from_config(policy_config([*MODE, f"policy.denoiser.conditioning={conditioning}"]),
                                  {"state": [5]}, [], 2, ["a", "b"])
    stats = {"state": array_stats(np.random.default_rng(0).normal(size=(50, 5))),
             "action": array_stats(np.random.default_rng(1).normal(size=(50, 2)))}
    policy = DiffusionPolicy(spec, Normalizer.from_stats(stats, spec.normalize)).train()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(3):      # the output layer opens in step 1, the adaLN gates in step 2
        optimizer.zero_grad()
        policy.compute_loss({**BATCH, "action": torch.randn(3, 6, 2)})[0].backward()
        optimizer.step()
    block = policy.denoiser.blocks[0]
    grads = {"experts": block.experts.w2.grad, "self_attn": block.self_attn.out.weight.grad,
             "cross_attn": block.cross_attn.out.weight.grad}
    if conditioning == "adaln":
        grads["ada"] = block.ada[-1].weight.grad
    assert all(g.abs().sum() > 0 for g in grads.values()), {k: float(g.abs().sum()) for k, g in grads.items()}
