"""Tests of the diffusion core (pure PyTorch): schedule, normaliser, PIDM loss, samplers, baselines.

Physics residuals are small torch stand-ins (a fixed dense linear operator ``A x - b``);
hand values are computed from the cosine formula with the ``math`` module, independently
of the schedule class.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pidm_fem.diffusion.experts import ChannelExperts, TimestepExperts
from pidm_fem.diffusion.guidance import CoCoGenCorrector, PhysicsGuidedConditioning
from pidm_fem.diffusion.input_views import LinearViewInputs, spectral_norm_estimate
from pidm_fem.diffusion.losses import PIDMLoss
from pidm_fem.diffusion.normalization import FieldNormalizer, LinearChannelMap, LogChannelMap
from pidm_fem.diffusion.parameterization import VPredictionDenoiser, x0_denoiser
from pidm_fem.diffusion.samplers import sample
from pidm_fem.diffusion.schedule import CosineSchedule
from pidm_fem.diffusion.trajectory_states import TrajectoryStates

C, N = 2, 5  # fields and nodes of the toy samples


def hand_alpha_bar(t: int, T: int, s: float = 0.008) -> float:
    """abar_t from the clipped cosine betas, by hand (t = -1 gives 1)."""
    f = [math.cos((k / T + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
    value = 1.0
    for k in range(t + 1):
        value *= 1 - min(1 - f[k + 1] / f[k], 0.999)
    return value


def hand_posterior_variance(t: int, T: int) -> float:
    t = max(t, 1)
    abar, abar_prev = hand_alpha_bar(t, T), hand_alpha_bar(t - 1, T)
    beta = 1 - abar / abar_prev
    return beta * (1 - abar_prev) / (1 - abar)


class LinearResidual:
    """``R(x) = A vec(x) - b`` on physical samples (B, C, n); records its inputs."""

    def __init__(self, seed: int = 0, rows: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(rows, C * N, generator=g, dtype=torch.float64)
        self.b = torch.randn(rows, generator=g, dtype=torch.float64)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return x.flatten(1) @ self.A.T - self.b


class FixedDenoiser(nn.Module):
    """Returns a fixed tensor whatever its input: an oracle when that tensor is the data."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.register_buffer("output", output.clone())

    def forward(self, x, t, cond=None, scalars=None):
        return self.output + 0 * x


class TinyDenoiser(nn.Module):
    """Per-node channel mixing plus a learned time embedding and scalar term."""

    def __init__(self, cond_channels: int = 0, n_scalars: int = 0, T: int = 100):
        super().__init__()
        self.mix = nn.Conv1d(C + cond_channels, C, 1)
        self.hidden = nn.Conv1d(C, C, 1)
        self.time = nn.Embedding(T, C)
        self.scalars = nn.Linear(n_scalars, C) if n_scalars else None
        self.double()

    def forward(self, x, t, cond=None, scalars=None):
        h = x if cond is None else torch.cat([x, cond], dim=1)
        h = torch.tanh(self.mix(h)) + self.time(t).unsqueeze(-1)
        if self.scalars is not None:
            h = h + self.scalars(scalars).unsqueeze(-1)
        return self.hidden(h)


@pytest.fixture
def normalizer() -> FieldNormalizer:
    return FieldNormalizer([0.5, -2.0], [0.1, 3.0])


@pytest.fixture
def data(normalizer) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return normalizer.denormalize(torch.randn(4, C, N, generator=g, dtype=torch.float64))


def test_cosine_schedule_matches_hand_formula():
    T = 10
    schedule = CosineSchedule(T)
    for t in range(T):
        assert schedule.alpha_bar[t].item() == pytest.approx(hand_alpha_bar(t, T), rel=1e-12)
        assert schedule.alpha_bar_prev[t].item() == pytest.approx(hand_alpha_bar(t - 1, T), rel=1e-12)
    assert schedule.betas[-1].item() == 0.999  # the last beta is clipped
    assert schedule.alpha_bar[-1].item() > 0
    expected = hand_posterior_variance(1, T)
    assert schedule.posterior_variance[1].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.posterior_variance[0].item() == schedule.posterior_variance[1].item()
    assert schedule.posterior_variance[4].item() == pytest.approx(hand_posterior_variance(4, T), rel=1e-12)
    snr = [hand_alpha_bar(t, T) / (1 - hand_alpha_bar(t, T)) for t in range(T)]
    assert schedule.snr.tolist() == pytest.approx(snr, rel=1e-12)
    weights = schedule.min_snr_weight(torch.arange(T))
    assert weights.tolist() == pytest.approx([min(v, 5.0) for v in snr], rel=1e-12)
    assert weights[0].item() == 5.0 and weights[-1].item() < 5.0


def test_forward_and_posterior_formulas(data):
    schedule = CosineSchedule()
    x0, noise = data, torch.randn_like(data)
    t = torch.tensor([0, 3, 50, 99])
    x_t = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.predict_noise(x_t, t, x0), noise, atol=1e-9)
    ab = torch.tensor([hand_alpha_bar(k, 100) for k in t.tolist()], dtype=torch.float64).view(-1, 1, 1)
    ab_prev = torch.tensor([hand_alpha_bar(k - 1, 100) for k in t.tolist()], dtype=torch.float64).view(-1, 1, 1)
    beta = 1 - ab / ab_prev
    mean = (beta * ab_prev.sqrt() * x0 + (1 - ab_prev) * (1 - beta).sqrt() * x_t) / (1 - ab)
    assert torch.allclose(schedule.posterior_mean(x0, x_t, t), mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(schedule.posterior_mean(x0, x_t, t)[0], x0[0], atol=1e-12)  # t = 0 gives x0_hat
    assert schedule.q_sample(x0.float(), t, noise.float()).dtype == torch.float32


def test_residual_and_data_terms_match_hand_values(normalizer, data):
    torch.manual_seed(0)
    output = torch.randn(4, C, N, dtype=torch.float64)
    residual = LinearResidual()
    t = torch.tensor([0, 1, 37, 99])
    loss = PIDMLoss(CosineSchedule(), normalizer, residual=residual)
    total, parts = loss(FixedDenoiser(output), data, t=t)

    mean = torch.tensor([0.5, -2.0], dtype=torch.float64).view(1, C, 1)
    std = torch.tensor([0.1, 3.0], dtype=torch.float64).view(1, C, 1)
    x_phys = output * std + mean
    r = x_phys.flatten(1) @ residual.A.T - residual.b
    variance = torch.tensor([hand_posterior_variance(k, 100) for k in t.tolist()], dtype=torch.float64)
    expected_residual = 1e-3 * (r**2 / (2 * variance[:, None])).mean()
    x0_norm = (data - mean) / std
    alpha_bar = torch.tensor([hand_alpha_bar(k, 100) for k in t.tolist()], dtype=torch.float64)
    snr = alpha_bar / (1 - alpha_bar)
    expected_data = (snr.clamp(max=5.0) * ((output - x0_norm) ** 2).mean(dim=(1, 2))).mean()

    assert parts["residual"] == pytest.approx(expected_residual.item(), rel=1e-10)
    assert parts["data"] == pytest.approx(expected_data.item(), rel=1e-10)
    assert parts["constraints"] == 0.0 and parts["objective"] == 0.0
    assert total.item() == pytest.approx(parts["data"] + parts["residual"], rel=1e-12)
    assert parts["total"] == pytest.approx(total.item(), rel=1e-12)
    assert torch.allclose(residual.inputs[0], x_phys)  # the physics saw physical values


def test_physics_max_t_drops_the_noisy_samples_from_the_residual_term(normalizer, data):
    output = torch.randn(4, C, N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 1, 37, 99])
    parts = [
        PIDMLoss(CosineSchedule(), normalizer, residual=LinearResidual(), physics_max_t=max_t)(
            FixedDenoiser(output), data, t=t
        )[1]
        for max_t in (None, 38)
    ]
    residual = LinearResidual()
    r = residual(normalizer.denormalize(output))
    variance = torch.tensor([hand_posterior_variance(k, 100) for k in t.tolist()], dtype=torch.float64)
    per_sample = 1e-3 * (r**2 / (2 * variance[:, None])).mean(dim=1)
    assert parts[0]["residual"] == pytest.approx(per_sample.mean().item(), rel=1e-10)
    assert parts[1]["residual"] == pytest.approx(per_sample[:3].sum().item() / 4, rel=1e-10)
    assert parts[1]["data"] == parts[0]["data"]
    with pytest.raises(ValueError, match="physics_max_t"):
        PIDMLoss(CosineSchedule(), normalizer, residual=residual, physics_max_t=0)


def test_max_t_draws_the_timesteps_of_a_low_noise_expert_only(normalizer, data):
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, cond=None, scalars=None):
            seen.append(t.clone())
            return torch.zeros_like(x)

    loss = PIDMLoss(CosineSchedule(), normalizer, c_residual=0.0, max_t=3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        loss(Recorder(), data, generator=generator)
    drawn = torch.cat(seen)
    assert set(drawn.tolist()) == {0, 1, 2}  # every step below the split, and none above
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match="max_t must be an integer in"):
            PIDMLoss(CosineSchedule(), normalizer, max_t=bad)


@pytest.mark.parametrize(
    ("method", "n_steps", "eta"),
    [("ddpm", None, 0.0), ("ddim", 100, 0.0), ("ddim", 10, 0.0), ("ddim", 7, 0.5), ("ddim", 20, 1.0)],
)
def test_oracle_denoiser_sampling_reproduces_data(normalizer, data, method, n_steps, eta):
    oracle = FixedDenoiser(normalizer.normalize(data))
    generator = torch.Generator().manual_seed(3)
    samples = sample(
        oracle, CosineSchedule(), normalizer, tuple(data.shape), method=method, n_steps=n_steps, eta=eta,
        generator=generator, dtype=torch.float64, progress=False,
    )
    assert torch.allclose(samples, data, rtol=0, atol=1e-11)


def test_sampler_reports_each_estimate_and_the_last_is_the_sample(normalizer, data):
    recorded = []
    denoiser = TinyDenoiser()
    samples = sample(
        denoiser, CosineSchedule(), normalizer, tuple(data.shape), method="ddim", n_steps=10,
        generator=torch.Generator().manual_seed(3), dtype=torch.float64, progress=False,
        on_step=lambda t, x0_hat: recorded.append((t, x0_hat)),
    )
    times = [t for t, _ in recorded]
    assert len(times) == 10 and times == sorted(times, reverse=True) and times[0] == 99
    assert torch.equal(recorded[-1][1], samples)  # deterministic DDIM ends on its last estimate (physical units)
    assert not torch.allclose(recorded[0][1], samples)


def test_sample_estimate_with_oracle_returns_x0(normalizer, data):
    residual = LinearResidual()
    t = torch.tensor([0, 1, 50, 99])
    loss = PIDMLoss(
        CosineSchedule(), normalizer, residual=residual, c_residual=1.0, x0_estimate="sample", sample_steps=3
    )
    _, parts = loss(FixedDenoiser(normalizer.normalize(data)), data, generator=torch.Generator().manual_seed(0), t=t)
    assert torch.allclose(residual.inputs[0], data, rtol=0, atol=1e-11)
    r = data.flatten(1) @ residual.A.T - residual.b
    variance = torch.tensor([hand_posterior_variance(k, 100) for k in t.tolist()], dtype=torch.float64)
    assert parts["residual"] == pytest.approx((r**2 / (2 * variance[:, None])).mean().item(), rel=1e-8)


def test_sample_estimate_gradients_reach_every_parameter(normalizer, data):
    torch.manual_seed(0)
    model = TinyDenoiser(n_scalars=1)
    loss = PIDMLoss(
        CosineSchedule(), normalizer, residual=LinearResidual(), c_data=0.0, c_residual=1.0,
        x0_estimate="sample", sample_steps=3,
    )
    scalars = torch.rand(4, 1, dtype=torch.float64)
    total, parts = loss(model, data, scalars=scalars, t=torch.tensor([5, 20, 60, 99]))
    assert parts["data"] == 0.0 and parts["residual"] > 0
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # The chain evaluates the network at the later grid times too: their embedding rows get gradients.
    rows_with_grad = set(torch.nonzero(model.time.weight.grad.abs().sum(dim=1)).flatten().tolist())
    assert {5, 20, 60, 99} < rows_with_grad


def test_plain_ddpm_never_calls_the_residual(normalizer, data):
    def forbidden(x):
        raise AssertionError("the residual must not be called when c_residual = 0")

    for estimate in ("mean", "sample"):
        loss = PIDMLoss(CosineSchedule(), normalizer, residual=forbidden, c_residual=0.0, x0_estimate=estimate)
        total, parts = loss(TinyDenoiser(), data, generator=torch.Generator().manual_seed(0))
        assert parts["residual"] == 0.0 and parts["total"] == pytest.approx(parts["data"])
        total.backward()


def test_constraint_and_objective_terms_match_hand_values(normalizer, data):
    torch.manual_seed(0)
    output = torch.randn(4, C, N, dtype=torch.float64)

    def equality(x):
        return x.sum(dim=(1, 2)) - 1.0

    def inequality(x):  # first entry always satisfied (negative), second always violated
        m = x[:, 0].mean(dim=1)
        return torch.stack([m - 10.0, m + 10.0], dim=1)

    def objective(x):
        return x.pow(2).mean(dim=(1, 2))

    t = torch.tensor([0, 10, 40, 80])
    loss = PIDMLoss(
        CosineSchedule(), normalizer, c_residual=0.0, equality=equality, c_eq=0.5,
        inequality=inequality, c_ineq=2.0, objective=objective, lambda_opt=0.3,
    )
    total, parts = loss(FixedDenoiser(output), data, t=t)
    x = normalizer.denormalize(output)
    variance = torch.tensor([hand_posterior_variance(k, 100) for k in t.tolist()], dtype=torch.float64)[:, None]
    g, h = equality(x)[:, None], inequality(x).clamp(min=0)
    assert h[:, 0].abs().sum() == 0 and (h[:, 1] > 0).all()
    expected_constraints = 0.5 * (g**2 / (2 * variance)).mean() + 2.0 * (h**2 / (2 * variance)).mean()
    assert parts["constraints"] == pytest.approx(expected_constraints.item(), rel=1e-10)
    assert parts["objective"] == pytest.approx(0.3 * objective(x).mean().item(), rel=1e-12)
    assert parts["total"] == pytest.approx(parts["data"] + parts["constraints"] + parts["objective"], rel=1e-12)


def test_trajectory_states_lie_on_the_ddim_chain_and_are_kept_every_steps(normalizer, data):
    torch.manual_seed(0)
    model = TinyDenoiser()
    schedule = CosineSchedule()
    states = TrajectoryStates(schedule, every=3, n_steps=10, max_t=50)
    # the chain by hand: x from the same noise, DDIM steps 99, 89, ..., 9 -> -1
    generator = torch.Generator().manual_seed(5)
    x_t, t = states.draw(model, tuple(data.shape), dtype=torch.float64, device="cpu", generator=generator)
    x = torch.randn(data.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    visited = {}
    with torch.no_grad():
        for k in range(10):
            now, prev = torch.full((4,), 99 - 10 * k), torch.full((4,), 89 - 10 * k)
            visited[99 - 10 * k] = x
            x = schedule.ddim_step(model(x, now), x, now, prev)
    assert set(t.tolist()) <= {49, 39, 29, 19, 9}
    for b in range(4):
        assert torch.equal(x_t[b], visited[int(t[b])][b])
    assert not x_t.requires_grad

    # next(): drawn on the first call, kept for `every` calls, then drawn afresh; a restored state repeats the draws
    draws = [states.next(model, tuple(data.shape), dtype=torch.float64, device="cpu", generator=generator)
             for _ in range(4)]
    assert all(torch.equal(draws[0][0], draw[0]) for draw in draws[1:3]) and not torch.equal(draws[0][0], draws[3][0])
    saved, generator_state = states.state_dict(), generator.get_state()
    later = [states.next(model, tuple(data.shape), dtype=torch.float64, device="cpu", generator=generator)[0]
             for _ in range(3)]
    restored = TrajectoryStates(schedule, every=3, n_steps=10, max_t=50)
    restored.load_state_dict(saved)
    generator.set_state(generator_state)
    again = [restored.next(model, tuple(data.shape), dtype=torch.float64, device="cpu", generator=generator)[0]
             for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(later, again)) and not torch.equal(later[1], later[2])
    with pytest.raises(ValueError, match="keeps none"):
        TrajectoryStates(schedule, every=3, n_steps=10, max_t=5)
    with pytest.raises(ValueError, match="eta"):
        TrajectoryStates(schedule, every=3, n_steps=10, eta=1.5)
    with pytest.raises(ValueError, match="every"):
        TrajectoryStates(schedule, every=0, n_steps=10)


def test_stochastic_trajectory_states_take_each_step_with_fresh_noise(data):
    torch.manual_seed(0)
    model = TinyDenoiser()
    schedule = CosineSchedule()
    states = TrajectoryStates(schedule, every=1, n_steps=10, max_t=50, eta=1.0)
    x_t, t = states.draw(model, tuple(data.shape), dtype=torch.float64, device="cpu",
                         generator=torch.Generator().manual_seed(5))
    # the chain by hand: the start noise, then one noise draw per step, then the stopping steps
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(data.shape, generator=generator, dtype=torch.float64)
    visited = {}
    with torch.no_grad():
        for k in range(10):
            now, prev = torch.full((4,), 99 - 10 * k), torch.full((4,), 89 - 10 * k)
            visited[99 - 10 * k] = x
            noise = torch.randn(data.shape, generator=generator, dtype=torch.float64)
            x = schedule.ddim_step(model(x, now), x, now, prev, eta=1.0, noise=noise)
    for b in range(4):
        assert torch.equal(x_t[b], visited[int(t[b])][b])


def test_trajectory_physics_acts_in_training_only_and_reaches_the_parameters(normalizer, data):
    torch.manual_seed(0)
    model = TinyDenoiser()
    residual = LinearResidual()
    t = torch.tensor([0, 10, 40, 80])

    def loss_with(trajectory):
        return PIDMLoss(CosineSchedule(), normalizer, residual=residual, c_residual=1.0, trajectory=trajectory)

    plain = loss_with(None)(model, data, generator=torch.Generator().manual_seed(0), t=t)[1]
    traced = loss_with(TrajectoryStates(CosineSchedule(), every=2, n_steps=10, max_t=50))
    total, parts = traced(model, data, generator=torch.Generator().manual_seed(0), t=t)
    assert parts["data"] == plain["data"] and parts["residual"] > plain["residual"]
    # the added term is the residual of the network's estimates of the drawn states, at their own t
    x_t, t_states = traced.trajectory.x_t, traced.trajectory.t
    with torch.no_grad():
        r = residual(normalizer.denormalize(model(x_t, t_states)))
    variance = torch.tensor([hand_posterior_variance(k, 100) for k in t_states.tolist()], dtype=torch.float64)
    added = (r**2 / (2 * variance[:, None])).mean().item()
    assert parts["residual"] == pytest.approx(plain["residual"] + added, rel=1e-10)
    model.zero_grad()
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()  # validation: no trajectory states
    assert traced(model, data, generator=torch.Generator().manual_seed(0), t=t)[1]["residual"] == plain["residual"]
    with pytest.raises(ValueError, match="physics-guided"):
        PIDMLoss(CosineSchedule(), normalizer, residual=residual, trajectory=traced.trajectory,
                 conditioning=PhysicsGuidedConditioning(residual, normalizer))


def test_state_misfit_term_is_the_weighted_mean_sum_of_squares(normalizer, data):
    output = torch.randn(4, C, N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def misfit(x):
        return x[:, 0] - x[:, 1]

    loss = PIDMLoss(CosineSchedule(), normalizer, c_residual=0.0, state_misfit=misfit, c_state=0.7, physics_max_t=38)
    _, parts = loss(FixedDenoiser(output), data, t=torch.tensor([0, 1, 37, 99]))
    squares = misfit(normalizer.denormalize(output)).pow(2).sum(dim=1)
    assert parts["state"] == pytest.approx(0.7 * squares[:3].sum().item() / 4, rel=1e-12)
    with pytest.raises(ValueError, match="state_misfit"):
        PIDMLoss(CosineSchedule(), normalizer, c_residual=0.0, c_state=1.0)


def test_state_misfit_on_trajectory_states_only(normalizer, data):
    torch.manual_seed(0)
    model = TinyDenoiser()
    t = torch.tensor([0, 10, 40, 80])

    def misfit(x):
        return x[:, 0] - x[:, 1]

    def loss_on(state_on, trajectory):
        return PIDMLoss(CosineSchedule(), normalizer, residual=LinearResidual(), c_residual=1.0, state_misfit=misfit,
                        c_state=0.5, state_on=state_on, trajectory=trajectory)

    def parts(loss):
        return loss(model, data, generator=torch.Generator().manual_seed(0), t=t)[1]

    everywhere = parts(loss_on("all", TrajectoryStates(CosineSchedule(), every=2, n_steps=10, max_t=50)))
    traced = loss_on("trajectory", TrajectoryStates(CosineSchedule(), every=2, n_steps=10, max_t=50))
    only = parts(traced)
    with torch.no_grad():
        on_states = misfit(normalizer.denormalize(model(traced.trajectory.x_t, traced.trajectory.t)))
    assert only["state"] == pytest.approx(0.5 * on_states.pow(2).sum(dim=1).mean().item(), rel=1e-12)
    assert everywhere["state"] > only["state"] > 0 and only["residual"] == everywhere["residual"]
    model.eval()  # validation: no trajectory states, so no state term
    assert parts(traced)["state"] == 0 and parts(loss_on("trajectory", None))["state"] == 0
    with pytest.raises(ValueError, match="state_on"):
        loss_on("data", None)


def test_cocogen_corrections_reduce_a_linear_residual(normalizer, data):
    residual = LinearResidual()
    std = normalizer.std.repeat_interleave(N)
    hessian = (residual.A * std).T @ (residual.A * std)
    corrector = CoCoGenCorrector(residual, normalizer, step_size=0.5 / torch.linalg.eigvalsh(hessian).max().item())
    x = normalizer.normalize(data)
    norms = []
    for _ in range(6):
        norms.append(residual(normalizer.denormalize(x)).norm(dim=1))
        x = corrector.correct(x)
    for before, after in zip(norms, norms[1:]):
        assert (after < before).all()


def test_cocogen_line_search_is_stable_where_the_fixed_step_diverges(normalizer, data):
    residual = LinearResidual()
    std = normalizer.std.repeat_interleave(N)
    hessian = (residual.A * std).T @ (residual.A * std)
    big = 50.0 / torch.linalg.eigvalsh(hessian).max().item()  # 25x beyond the stable fixed step
    x = normalizer.normalize(data)
    r0 = residual(data).norm(dim=1)
    fixed = CoCoGenCorrector(residual, normalizer, step_size=big).correct(x, 10)
    assert (residual(normalizer.denormalize(fixed)).norm(dim=1) > 10 * r0).all()
    searched = CoCoGenCorrector(residual, normalizer, step_size=big, line_search=True)
    norms = [r0]
    for _ in range(10):
        x = searched.correct(x)
        norms.append(residual(normalizer.denormalize(x)).norm(dim=1))
    assert all((after < before).all() for before, after in zip(norms, norms[1:]))
    assert (norms[-1] < 0.5 * r0).all()


def test_frozen_channels_take_no_physics_gradient(normalizer, data):
    """With channel 1 frozen the residual term trains channel 0 only, and its value is unchanged."""
    t = torch.tensor([0, 1, 37, 99])
    frozen, free = (PIDMLoss(CosineSchedule(), normalizer, residual=LinearResidual(), c_data=0.0, frozen_channels=c)
                    for c in ((1,), ()))
    grads, values = [], []
    for loss in (frozen, free):
        output = torch.randn(4, C, N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        model = FixedDenoiser(output)
        model.output.requires_grad_(True)
        total, _ = loss(model, data, t=t)
        (grad,) = torch.autograd.grad(total, model.output)
        grads.append(grad)
        values.append(total.item())
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    assert torch.equal(grads[0][:, 1], torch.zeros_like(grads[0][:, 1]))
    assert torch.allclose(grads[0][:, 0], grads[1][:, 0], rtol=1e-12, atol=0)
    assert grads[1][:, 1].abs().max() > 0


def test_cocogen_with_frozen_channels_corrects_the_state_only(normalizer, data):
    residual = LinearResidual()
    corrector = CoCoGenCorrector(residual, normalizer, step_size=1e-3, line_search=True, frozen_channels=(1,))
    x = normalizer.normalize(data)
    corrected = corrector.correct(x, 10)
    assert torch.equal(corrected[:, 1], x[:, 1])
    assert (residual(normalizer.denormalize(corrected)).norm(dim=1) < residual(data).norm(dim=1)).all()


class OracleVelocity(nn.Module):
    """Returns the exact v of known clean samples and noise."""

    def __init__(self, schedule: CosineSchedule, x0: torch.Tensor, noise: torch.Tensor):
        super().__init__()
        self.schedule, self.x0, self.noise = schedule, x0, noise

    def forward(self, x, t, cond=None, scalars=None):
        abar = self.schedule.alpha_bar[t].reshape(-1, 1, 1)
        return abar.sqrt() * self.noise - (1 - abar).sqrt() * self.x0


def test_v_prediction_recovers_x0_and_scales_the_network_error(normalizer, data):
    schedule = CosineSchedule()
    x0 = normalizer.normalize(data)
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 1, 50, 99])
    x_t = schedule.q_sample(x0, t, noise)
    oracle = x0_denoiser(OracleVelocity(schedule, x0, noise), "v", schedule)
    assert torch.allclose(oracle(x_t, t), x0, atol=1e-12)
    # A network error e reaches x0_hat as sqrt(1 - abar_t) e.
    zero = VPredictionDenoiser(FixedDenoiser(torch.zeros_like(x0)), schedule)
    error = zero(x_t, t) - oracle(x_t, t)
    v_error = OracleVelocity(schedule, x0, noise)(x_t, t)
    assert torch.allclose(error, (1 - schedule.alpha_bar[t]).sqrt().reshape(-1, 1, 1) * v_error, atol=1e-12)
    assert list(zero.state_dict()) == ["network.output"]  # the schedule is not stored
    assert x0_denoiser(zero, "x0", schedule) is zero
    with pytest.raises(ValueError, match="prediction"):
        x0_denoiser(zero, "eps", schedule)


def test_cocogen_hooks_in_the_sampler(normalizer, data):
    residual = LinearResidual()
    x0_norm = normalizer.normalize(data)
    oracle = FixedDenoiser(x0_norm)
    schedule = CosineSchedule()

    def draw(corrector):
        return sample(oracle, schedule, normalizer, tuple(data.shape), corrector=corrector,
                      generator=torch.Generator().manual_seed(0), dtype=torch.float64, progress=False)

    # With an oracle the sample equals the data before the last step's correction.
    last_only = CoCoGenCorrector(residual, normalizer, step_size=1e-3, n_during=1)
    assert torch.allclose(draw(last_only), normalizer.denormalize(last_only.correct(x0_norm)), atol=1e-11)
    after = CoCoGenCorrector(residual, normalizer, step_size=1e-3, n_during=3, n_after=4)
    expected = normalizer.denormalize(after.correct(x0_norm, 5))
    assert torch.allclose(draw(after), expected, atol=1e-11)
    r0 = residual(data).norm(dim=1)
    assert (residual(draw(after)).norm(dim=1) < r0).all()


def test_gradient_channels_are_the_normalised_residual_gradient(normalizer, data):
    residual = LinearResidual()
    guidance = PhysicsGuidedConditioning(residual, normalizer)
    x_t = torch.randn(4, C, N, dtype=torch.float64)
    channels = guidance.gradient_channels(x_t)
    r = normalizer.denormalize(x_t).flatten(1) @ residual.A.T - residual.b
    grad = (r @ residual.A).view(4, C, N) * normalizer.std.view(1, C, 1)  # chain rule to normalised units
    expected = grad / grad.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()
    assert torch.allclose(channels, expected, atol=1e-12)
    assert torch.allclose(channels.pow(2).mean(dim=(1, 2)), torch.ones(4, dtype=torch.float64))


def test_classifier_free_guidance(normalizer):
    torch.manual_seed(0)
    model = TinyDenoiser(cond_channels=1 + C)
    x_t = torch.randn(3, C, N, dtype=torch.float64)
    t = torch.tensor([4, 50, 99])
    cond = torch.randn(3, 1, N, dtype=torch.float64)
    guidance = PhysicsGuidedConditioning(LinearResidual(), normalizer, scale=0.0)
    full = guidance.condition(x_t, cond)
    assert torch.equal(full[:, :1], cond) and full.shape == (3, 1 + C, N)
    conditional = model(x_t, t, cond=full)
    assert torch.allclose(guidance.predict(model, x_t, t, cond), conditional, atol=1e-14)
    null = torch.cat([cond, torch.zeros(3, C, N, dtype=torch.float64)], dim=1)
    guidance.scale = 3.0
    expected = 4.0 * conditional - 3.0 * model(x_t, t, cond=null)
    assert torch.allclose(guidance.predict(model, x_t, t, cond), expected, atol=1e-13)


def test_loss_builds_and_drops_the_gradient_channels(normalizer, data):
    seen = []

    class Recorder(TinyDenoiser):
        def forward(self, x, t, cond=None, scalars=None):
            seen.append(cond.detach().clone())
            return super().forward(x, t, cond=cond, scalars=scalars)

    model = Recorder(cond_channels=1 + C)
    cond = torch.randn(4, 1, N, dtype=torch.float64)
    for dropout in (0.0, 1.0):
        guidance = PhysicsGuidedConditioning(LinearResidual(), normalizer, dropout=dropout)
        loss = PIDMLoss(CosineSchedule(), normalizer, c_residual=0.0, conditioning=guidance)
        loss(model, data, cond=cond, generator=torch.Generator().manual_seed(0))
        assert seen[-1].shape == (4, 1 + C, N) and torch.equal(seen[-1][:, :1], cond)
        rms = seen[-1][:, 1:].pow(2).mean(dim=(1, 2)).sqrt()
        expected = torch.zeros(4) if dropout == 1.0 else torch.ones(4)
        assert torch.allclose(rms.float(), expected)


def test_guided_sampling_runs_and_is_seeded(normalizer):
    torch.manual_seed(0)
    model = TinyDenoiser(cond_channels=C, n_scalars=2)
    guidance = PhysicsGuidedConditioning(LinearResidual(), normalizer)
    scalars = torch.rand(3, 2, dtype=torch.float64)

    def draw(seed):
        return sample(model, CosineSchedule(), normalizer, (3, C, N), method="ddim", n_steps=8, eta=0.5,
                      scalars=scalars, guidance=guidance, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64, progress=False)

    first = draw(7)
    assert first.shape == (3, C, N) and torch.isfinite(first).all()
    assert torch.equal(first, draw(7))
    assert not torch.allclose(first, draw(8))


def test_normalizer_round_trip_and_state_dict():
    torch.manual_seed(0)
    data = torch.randn(6, 3, 7, dtype=torch.float64) * torch.tensor([0.05, 1.0, 40.0]).view(1, 3, 1)
    data = data + torch.tensor([1.0, 0.0, -5.0]).view(1, 3, 1)
    normalizer = FieldNormalizer.fit(data)
    z = normalizer.normalize(data)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(dim=(0, 2), correction=0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(normalizer.denormalize(z), data, atol=1e-12)
    restored = FieldNormalizer.from_state_dict(normalizer.state_dict())
    assert torch.equal(restored.normalize(data), z)
    assert normalizer.normalize(data.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="expected samples of shape"):
        normalizer.normalize(torch.zeros(2, 2, 7))
    with pytest.raises(ValueError, match="zero or non-finite standard deviation"):
        FieldNormalizer.fit(torch.ones(2, 1, 3))


def test_input_errors_are_clear(normalizer, data):
    schedule = CosineSchedule()
    with pytest.raises(ValueError, match="x0_estimate"):
        PIDMLoss(schedule, normalizer, c_residual=0.0, x0_estimate="median")
    with pytest.raises(ValueError, match="needs a residual"):
        PIDMLoss(schedule, normalizer)
    with pytest.raises(ValueError, match="visits all"):
        sample(TinyDenoiser(), schedule, normalizer, (1, C, N), method="ddpm", n_steps=10, progress=False)
    with pytest.raises(ValueError, match="n_steps"):
        sample(TinyDenoiser(), schedule, normalizer, (1, C, N), method="ddim", n_steps=101, progress=False)
    with pytest.raises(ValueError, match="timesteps must lie"):
        schedule.q_sample(data, torch.tensor([0, 1, 2, 100]), data)
    with pytest.raises(ValueError, match="T must be"):
        CosineSchedule(1)


def test_channel_maps_round_trip_fit_and_differentiate():
    torch.manual_seed(1)
    n = 5
    forward = torch.eye(n, dtype=torch.float64) * 2 + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
    linear = LinearChannelMap(forward, torch.linalg.inv(forward))
    data = torch.randn(8, 2, n, dtype=torch.float64)
    data[:, 1] = data[:, 1].exp()  # a positive field for the log map
    normalizer = FieldNormalizer.fit(data, [linear, LogChannelMap()])
    z = normalizer.normalize(data)
    mapped = torch.stack([data[:, 0] @ forward.T, data[:, 1].log()], dim=1)
    assert torch.allclose(z, (mapped - mapped.mean(dim=(0, 2), keepdim=True)) / mapped.std(dim=(0, 2), correction=0,
                                                                                          keepdim=True))
    assert torch.allclose(normalizer.denormalize(z), data, atol=1e-12)
    restored = FieldNormalizer.from_state_dict(normalizer.state_dict(), normalizer.maps)
    assert torch.equal(restored.normalize(data), z)
    # samples of the log channel are positive whatever the network outputs; gradients flow through the maps
    y = (10 * torch.randn(3, 2, n, dtype=torch.float64)).requires_grad_()
    x = normalizer.denormalize(y)
    assert bool((x[:, 1] > 0).all())
    x.sum().backward()
    assert torch.isfinite(y.grad).all() and bool((y.grad != 0).all())
    assert normalizer.normalize(data.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="positive values"):
        normalizer.normalize(-data)
    with pytest.raises(ValueError, match="2 channel maps for 3 channels"):
        FieldNormalizer(torch.zeros(3), torch.ones(3), [None, None])
    with pytest.raises(ValueError, match="square matrices"):
        LinearChannelMap(torch.eye(3), torch.eye(4))


class _CondRecorder(nn.Module):
    """Returns x and keeps the condition channels it was given."""

    def forward(self, x, t, cond=None, scalars=None):
        self.cond = cond
        return x


def test_linear_views_append_the_scaled_mapped_channels_to_the_condition():
    g = torch.Generator().manual_seed(4)
    n = 12
    matrix = torch.randn(n, n, generator=g, dtype=torch.float64)
    assert spectral_norm_estimate(matrix) == pytest.approx(float(torch.linalg.matrix_norm(matrix, 2)), rel=1e-6)
    recorder = _CondRecorder()
    model = LinearViewInputs(recorder, [(1, matrix), (1, 2 * matrix)])
    assert model.n_views == 2 and not model.state_dict()  # the view is rebuilt, not stored
    x = torch.randn(3, 2, n, generator=g)
    cond = torch.randn(3, 2, n, generator=g)
    assert torch.equal(model(x, torch.zeros(3, dtype=torch.int64), cond=cond), x)
    expected = x[:, 1] @ (matrix / torch.linalg.matrix_norm(matrix, 2)).float().T
    assert recorder.cond.shape == (3, 4, n) and torch.equal(recorder.cond[:, :2], cond)
    torch.testing.assert_close(recorder.cond[:, 2], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(recorder.cond[:, 3], expected, rtol=1e-5, atol=1e-6)  # scale-free
    model(x, torch.zeros(3, dtype=torch.int64))
    assert recorder.cond.shape == (3, 2, n)
    with pytest.raises(ValueError, match="at least one view"):
        LinearViewInputs(recorder, [])


class _Recorder(nn.Module):
    """x0_hat = scale * x_t, remembering the timesteps (and conditions) it was called with."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale, self.calls = scale, []

    def forward(self, x, t, cond=None, scalars=None):
        self.calls.append((t.clone(), None if cond is None else cond.clone()))
        return self.scale * x


def test_timestep_experts_route_each_sample_to_one_expert():
    low, high = _Recorder(2.0), _Recorder(-1.0)
    experts = TimestepExperts(low, high, split=10)
    x, cond = torch.randn(5, 2, 7), torch.randn(5, 1, 7)
    t = torch.tensor([0, 9, 10, 50, 3])
    out = experts(x, t, cond=cond)
    is_low = t < 10
    torch.testing.assert_close(out[is_low], 2.0 * x[is_low])
    torch.testing.assert_close(out[~is_low], -x[~is_low])
    assert torch.equal(low.calls[0][0], t[is_low]) and torch.equal(high.calls[0][0], t[~is_low])
    assert torch.equal(low.calls[0][1], cond[is_low])
    experts(x, torch.full((5,), 20))  # no low-noise sample: the low expert is not called
    assert len(low.calls) == 1 and len(high.calls) == 2
    for split in (0, 1.5, True):
        with pytest.raises(ValueError, match="split must be a positive integer"):
            TimestepExperts(low, high, split)


def test_channel_experts_take_the_named_channels_from_the_other_denoiser():
    base, other = _Recorder(2.0), _Recorder(-3.0)
    composed = ChannelExperts(base, other, (1,))
    x, cond, t = torch.randn(4, 3, 6), torch.randn(4, 1, 6), torch.tensor([0, 5, 17, 99])
    out = composed(x, t, cond=cond)
    torch.testing.assert_close(out[:, [0, 2]], 2.0 * x[:, [0, 2]])
    torch.testing.assert_close(out[:, 1], -3.0 * x[:, 1])
    for recorder in (base, other):  # both see every sample, with its timestep and condition
        assert torch.equal(recorder.calls[0][0], t) and torch.equal(recorder.calls[0][1], cond)
    with pytest.raises(ValueError, match="out of range for 3 channels"):
        ChannelExperts(base, other, (3,))(x, t)
    for channels in ((), (1, 1), (-1,), (True,)):
        with pytest.raises(ValueError, match="channels must be distinct non-negative integers"):
            ChannelExperts(base, other, channels)


