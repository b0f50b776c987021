"""The Darcy PIDM case study: conversions, model factory, losses through the bridge, runs end to end."""

import dataclasses

import firedrake as fd
import numpy as np
import pytest
import torch

from pidm_fem.bridge import FieldLayout
from pidm_fem.experiments import DarcyExperiment, NodeFields, build_denoiser, diffusion_loss
from pidm_fem.mesh import unit_square_family
from pidm_fem.models import MeshDenoiser, RasterUNet, count_parameters
from pidm_fem.physics.darcy import DarcyProblem
from pidm_fem.physics.field_maps import neumann_laplacian_maps
from pidm_fem.training import CheckpointError, ConfigError, config_from_dict, load_checkpoint, load_config
from pidm_fem.training.config import ModelConfig

COARSE_MESH = unit_square_family()[0]


def small_config(**sections):
    """A tiny run on the coarse mesh: 4 training samples, short schedule, small mesh denoiser."""
    base = {
        "data": {"n_train": 4, "n_val": 2, "n_test": 2, "seed": 3},
        "model": {"kind": "mesh", "width": 16},
        "diffusion": {"T": 20, "method": "pidm", "c_residual": 1e-3, "sample_steps": 2},
        "training": {"batch_size": 4, "lr": 1e-3, "steps": 10, "ema_start": 0, "log_every": 5},
        "sampling": {"sampler": "ddim", "ddim_steps": 4},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return config_from_dict(base)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("darcy_data")


@pytest.fixture(scope="module")
def experiment(data_dir, tmp_path_factory):
    return DarcyExperiment(
        small_config(), COARSE_MESH, data_dir=data_dir, run_dir=tmp_path_factory.mktemp("run"), progress=False
    )


# ---------------------------------------------------------------- rows <-> node tensors


def test_node_fields_reshape_rows_and_keep_the_physics(experiment):
    fields, layout = experiment.fields, experiment.generator.layout
    rows = experiment.dataset().train
    x = fields.to_nodes(torch.from_numpy(rows))
    assert x.shape == (4, 2, fields.n_nodes) and fields.names == ("p", "K")
    np.testing.assert_array_equal(x[:, fields.channel("p")].numpy(), rows[:, layout.block("p")])
    np.testing.assert_array_equal(x[:, fields.channel("K")].numpy(), rows[:, layout.block("K")])
    np.testing.assert_array_equal(fields.to_rows(x).numpy(), rows)
    # The data solve the PDE through the (B, C, n) path; swapping the channels does not.
    f_max = float(np.abs(experiment.problem.f.dat.data_ro).max())
    assert experiment.residual(x).abs().max() < 1e-8 * f_max
    assert experiment.residual(x.flip(1)).abs().max() > 1e-2 * f_max
    with pytest.raises(ValueError, match=r"shape \(B, 2,"):
        fields.to_rows(x[:, :1])


def test_physics_residual_follows_the_config_and_the_reported_one_stays_strong(experiment, data_dir, tmp_path):
    x = experiment.fields.to_nodes(torch.from_numpy(experiment.dataset().train))
    wrong = x.clone()
    wrong[:, 0] *= 1.5
    preconditioned = DarcyExperiment(small_config(diffusion={"residual": "preconditioned"}), COARSE_MESH,
                                     data_dir=data_dir, run_dir=tmp_path, progress=False)
    torch.testing.assert_close(preconditioned.strong_residual(wrong), experiment.residual(wrong), rtol=0, atol=0)
    torch.testing.assert_close(experiment.strong_residual(wrong), experiment.residual(wrong), rtol=0, atol=0)
    expected = experiment.residual(wrong) @ torch.from_numpy(
        neumann_laplacian_maps(experiment.problem.V)[1].T.copy())
    torch.testing.assert_close(preconditioned.residual(wrong), expected)


def test_solve_state_recovers_the_data_pressure_and_flags_a_non_positive_k(experiment):
    x = experiment.fields.to_nodes(torch.from_numpy(experiment.dataset().train))
    p = x[:, 0]
    solved = experiment.solve_state(x)
    assert solved.dtype == torch.float64 and solved.shape == p.shape
    assert float((solved - p).abs().max()) < 1e-10 * float(p.abs().max())
    # another sample's permeability gives another pressure; a doubled K halves it
    other = torch.stack([x[:, 0], x.roll(1, dims=0)[:, 1]], dim=1)
    assert float((experiment.solve_state(other) - p).abs().max()) > 0.05 * float(p.abs().max())
    doubled_k = x * torch.tensor([1.0, 2.0], dtype=torch.float64)[:, None]
    torch.testing.assert_close(experiment.solve_state(doubled_k), 0.5 * p)
    bad = x.clone()
    bad[1, 1, 0] = -1.0
    solved = experiment.solve_state(bad)
    assert torch.isnan(solved[1]).all() and torch.isfinite(solved[[0, 2, 3]]).all()


def test_state_misfit_is_the_relative_state_error_and_moves_the_pressure_only(experiment):
    from pidm_fem.evaluation import relative_state_error

    x = experiment.fields.to_nodes(torch.from_numpy(experiment.dataset().train))
    assert float(experiment.state_misfit(x).abs().max()) < 1e-10  # the data obey their coupling
    other = torch.stack([x[:, 0] + 3.0, x.roll(1, dims=0)[:, 1]], dim=1).requires_grad_(True)  # gauge shift ignored
    misfit = experiment.state_misfit(other)
    weights = experiment.problem.lumped_mass()
    expected = relative_state_error(experiment.solve_state, other.detach() - torch.tensor([3.0, 0.0])[:, None],
                                     0, weights)
    np.testing.assert_allclose(misfit.pow(2).sum(dim=1).sqrt().detach().numpy(), expected, rtol=1e-10)
    misfit.pow(2).sum().backward()
    assert other.grad[:, 0].abs().sum() > 0 and other.grad[:, 1].abs().sum() == 0
    bad = x.clone()
    bad[1, 1, 0] = -1.0
    assert torch.equal(experiment.state_misfit(bad)[1], torch.zeros(x.shape[2], dtype=x.dtype))


def test_node_fields_refuse_other_layouts(experiment):
    p1 = experiment.problem.V
    p2 = DarcyProblem(p1.mesh(), degree=2).V
    with pytest.raises(ValueError, match="share one space"):
        NodeFields(FieldLayout.from_spaces({"p": p1, "K": p2}))
    with pytest.raises(ValueError, match="scalar fields only"):
        NodeFields(FieldLayout.from_spaces({"u": fd.VectorFunctionSpace(p1.mesh(), "CG", 1)}))
    with pytest.raises(ValueError, match="P1 fields"):
        NodeFields(FieldLayout.from_spaces({"p": p2, "K": p2})).mesh_nodes()
    mesh = experiment.mesh
    assert mesh.n_nodes == experiment.fields.n_nodes == p1.dof_count and mesh.n_triangles == p1.mesh().num_cells()


# ---------------------------------------------------------------- model factory and losses


def test_build_denoiser_kinds_and_config_errors(experiment):
    mesh = experiment.mesh
    unet = build_denoiser(ModelConfig(kind="unet", width=8), mesh, 2, cond_channels=2, n_timesteps=20)
    net = build_denoiser(ModelConfig(kind="mesh", width=8), mesh, 2, n_timesteps=20)
    assert isinstance(unet, RasterUNet) and unet.cond_channels == 2
    assert isinstance(net, MeshDenoiser) and net.cond_channels == 0
    x, t = torch.zeros(3, 2, mesh.n_nodes), torch.tensor([0, 5, 19])
    assert unet(x, t, cond=x).shape == net(x, t).shape == (3, 2, mesh.n_nodes)
    no_attention = ModelConfig(kind="unet", width=8, attention=False)
    without = build_denoiser(no_attention, mesh, 2, cond_channels=2, n_timesteps=20)
    assert count_parameters(without) < count_parameters(unet)
    with pytest.raises(ConfigError, match="model.width: must be even"):
        build_denoiser(ModelConfig(kind="unet", width=7), mesh, 2)
    with pytest.raises(ConfigError, match="model.width: must be a multiple of 4"):
        build_denoiser(ModelConfig(kind="mesh", width=6), mesh, 2)
    with pytest.raises(ConfigError, match="model.attention"):
        build_denoiser(ModelConfig(kind="mesh", attention=False), mesh, 2)
    products = build_denoiser(ModelConfig(kind="mesh", width=8, input_products=True), mesh, 2, n_timesteps=20)
    assert products.input_products is not None and products(x, t).shape == (3, 2, mesh.n_nodes)
    with pytest.raises(ConfigError, match="model.input_products: only the mesh denoiser"):
        build_denoiser(ModelConfig(kind="unet", width=8, input_products=True), mesh, 2)


def test_diffusion_loss_methods(experiment):
    normalizer = experiment.fit_normalizer()
    x0 = experiment.node_tensor(experiment.dataset().train)

    def forbidden(x):
        raise AssertionError("DDPM must not call the residual")

    ddpm_config = small_config(diffusion={"method": "ddpm"}).diffusion
    ddpm = diffusion_loss(ddpm_config, experiment.schedule, normalizer, forbidden)
    model = experiment.build_model()
    _, components = ddpm(model, x0, generator=torch.Generator().manual_seed(0))
    assert components["residual"] == 0 and components["data"] > 0
    guided = diffusion_loss(
        small_config(diffusion={"method": "physics_guided", "cond_dropout": 0.5}).diffusion,
        experiment.schedule,
        normalizer,
        experiment.residual,
        training=False,
    )
    assert guided.conditioning.dropout == 0 and guided.c_residual == 0
    assert experiment.coefficient_channels() == (experiment.fields.channel("K"),) == (1,)
    for setting, frozen in (("all", ()), ("state", (1,))):
        pidm = diffusion_loss(
            small_config(diffusion={"residual_gradient": setting}).diffusion,
            experiment.schedule,
            normalizer,
            experiment.residual,
            coefficient_channels=experiment.coefficient_channels(),
        )
        assert pidm.frozen_channels == frozen and pidm.physics_max_t is None
    late = small_config(diffusion={"physics_t_fraction": 0.2}).diffusion  # T = 20
    assert diffusion_loss(late, experiment.schedule, normalizer, experiment.residual).physics_max_t == 4
    with pytest.raises(ConfigError, match="physics_t_fraction"):
        small_config(diffusion={"physics_t_fraction": 0.0})
    with pytest.raises(ConfigError, match="diffusion.c_eq"):
        diffusion_loss(small_config(diffusion={"c_eq": 1.0}).diffusion, experiment.schedule, normalizer, forbidden)
    # trajectory states: training PIDM only, with the steps t < fraction * T of the chain
    # (T = 20, 4 steps: 19, 14, 9, 4)
    traced = small_config(diffusion={"trajectory_every": 5, "trajectory_steps": 4, "trajectory_t_fraction": 0.5})
    for method, training, expected in (("pidm", True, 10), ("pidm", False, None), ("ddpm", True, None)):
        diffusion = dataclasses.replace(traced.diffusion, method=method)
        loss = diffusion_loss(diffusion, experiment.schedule, normalizer, experiment.residual, training=training)
        assert (loss.trajectory and loss.trajectory.max_t) == expected
    early = small_config(diffusion={"trajectory_every": 5, "trajectory_steps": 4, "trajectory_t_fraction": 0.1})
    with pytest.raises(ConfigError, match="diffusion.trajectory_t_fraction: max_t = 2 keeps none"):
        diffusion_loss(early.diffusion, experiment.schedule, normalizer, experiment.residual)
    on_states = dataclasses.replace(traced.diffusion, c_state=1.0, state_on="trajectory")
    loss = diffusion_loss(
        on_states, experiment.schedule, normalizer, experiment.residual, state_misfit=experiment.state_misfit
    )
    assert loss.state_on == "trajectory" and loss.c_state == 1.0
    with pytest.raises(ConfigError, match="diffusion.state_on: 'trajectory' needs trajectory states"):
        diffusion_loss(dataclasses.replace(on_states, trajectory_every=0), experiment.schedule, normalizer,
                       experiment.residual, state_misfit=experiment.state_misfit)


@pytest.mark.parametrize("kind, x0_estimation", [("mesh", "mean"), ("unet", "mean"), ("mesh", "sample")])
def test_residual_gradient_reaches_every_parameter(experiment, kind, x0_estimation):
    config = small_config(model={"kind": kind, "width": 8}, diffusion={"x0_estimation": x0_estimation})
    normalizer = experiment.fit_normalizer()
    x0 = experiment.node_tensor(experiment.dataset().train)
    t = torch.tensor([0, 3, 9, 19])
    torch.manual_seed(0)
    model = build_denoiser(config.model, experiment.mesh, 2, n_timesteps=config.diffusion.T)

    full = diffusion_loss(config.diffusion, experiment.schedule, normalizer, experiment.residual)
    loss, components = full(model, x0, generator=torch.Generator().manual_seed(1), t=t)
    assert components["residual"] > 0
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name

    residual_only = dataclasses.replace(config.diffusion, c_data=0.0)
    model.zero_grad(set_to_none=True)
    loss, components = diffusion_loss(residual_only, experiment.schedule, normalizer, experiment.residual)(
        model, x0, generator=torch.Generator().manual_seed(1), t=t
    )
    assert components["data"] == 0 and components["residual"] > 0
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, name


# ---------------------------------------------------------------- training and runs


def test_training_on_four_samples_drives_the_data_loss_down(data_dir, tmp_path):
    config = small_config(training={"steps": 300, "lr": 2e-3, "log_every": 25, "val_every": 0, "checkpoint_every": 0})
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    trainer = experiment.trainer()
    train = trainer.train_data
    # evaluate() draws t and the noise from a freshly seeded generator: the same draws before and after.
    before = trainer.evaluate(train)
    summary = trainer.train()
    after = trainer.evaluate(train)
    assert summary.last_step == 300
    assert after["residual"] > 0
    assert after["data"] < before["data"] / 10, (before, after)


def test_config_driven_run_end_to_end(data_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {n_train: 4, n_val: 2, n_test: 2, seed: 3}\n"
        "model: {kind: mesh, width: 8}\n"
        "diffusion: {T: 10, method: pidm, c_residual: 1e-3}\n"
        "training: {steps: 4, batch_size: 2, lr: 1e-3, checkpoint_every: 2, val_every: 2, log_every: 1}\n"
        "sampling: {sampler: ddim, ddim_steps: 3, n_samples: 3, cocogen_after: 1, cocogen_step: 1e-6}\n"
    )
    config = load_config(path)
    run_dir = tmp_path / "run"
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False)
    data_file = experiment.data_path()
    splits = experiment.dataset()
    assert data_file.is_file() and [len(s) for s in (splits.train, splits.val, splits.test)] == [4, 2, 2]
    assert experiment.train().last_step == 4

    stamp = data_file.stat().st_mtime_ns
    longer = dataclasses.replace(config, training=dataclasses.replace(config.training, steps=6))
    resumed = DarcyExperiment(longer, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False)
    summary = resumed.train()
    assert (summary.first_step, summary.last_step) == (4, 6)
    assert data_file.stat().st_mtime_ns == stamp  # the cached samples were reused
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint.step == 6 and checkpoint.mesh_fingerprint == experiment.fingerprint
    normalizer = experiment.fit_normalizer().state_dict()
    torch.testing.assert_close(checkpoint.extra["normalizer"]["std"], normalizer["std"])

    rows = resumed.sample()
    assert rows.shape == (3, 2 * experiment.fields.n_nodes) and np.isfinite(rows).all()
    weights = experiment.problem.lumped_mass()
    p = rows[:, experiment.generator.layout.block("p")]
    assert np.abs(p @ weights).max() < 1e-12 * np.abs(p).max() * weights.sum()
    np.testing.assert_array_equal(resumed.sample(seed=0), rows)  # seeded

    other = dataclasses.replace(config, model=dataclasses.replace(config.model, width=12))
    with pytest.raises(CheckpointError, match="another model configuration"):
        DarcyExperiment(other, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).sample(2)


def test_elliptic_representation_round_trips_the_data_and_samples_positive_k(data_dir, tmp_path):
    config = small_config(
        model={"width": 8},
        diffusion={"representation": "elliptic", "T": 10},
        training={"steps": 2, "batch_size": 2},
        sampling={"sampler": "ddim", "ddim_steps": 2},
    )
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    normalizer = experiment.fit_normalizer()
    x0 = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().train))  # float64 rows
    z = normalizer.normalize(x0)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(2, dtype=torch.float64), atol=1e-6)  # fitted in float32
    torch.testing.assert_close(normalizer.denormalize(z), x0, rtol=1e-9, atol=1e-12)
    # the network sees log K and the strong-form Laplacian of p, not the fields
    K = experiment.fields.channel("K")
    assert torch.allclose(z[:, K] * normalizer.std[K] + normalizer.mean[K], x0[:, K].log())
    experiment.train()
    rows = experiment.sample(3)
    assert np.isfinite(rows).all() and rows[:, experiment.generator.layout.block("K")].min() > 0


def test_field_views_show_the_network_the_pressure_under_elliptic_coordinates(data_dir, tmp_path):
    config = small_config(model={"width": 8, "field_views": True}, diffusion={"representation": "elliptic", "T": 10},
                          training={"steps": 2, "batch_size": 2}, sampling={"sampler": "ddim", "ddim_steps": 2})
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    views = experiment.input_views()
    assert [channel for channel, _ in views] == [experiment.fields.channel("p")]
    experiment.train()
    rows = experiment.sample(2)
    assert np.isfinite(rows).all()
    # the view is the pressure: the map G takes the Laplacian coordinates back to p (of zero mean)
    p = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().train))[:, 0]
    q = experiment.channel_maps()[0].forward(p)
    torch.testing.assert_close(q @ views[0][1].T, p, rtol=1e-8, atol=1e-12)
    nodal = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, representation="nodal"))
    with pytest.raises(ConfigError, match="model.field_views: no field is linearly mapped"):
        DarcyExperiment(nodal, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "nodal", progress=False).build_model()


def test_gradient_views_are_the_recovered_gradients_of_the_physical_fields(data_dir, tmp_path):
    config = small_config(model={"width": 8, "field_views": True, "gradient_views": True},
                          diffusion={"representation": "elliptic", "T": 10},
                          training={"steps": 2, "batch_size": 2}, sampling={"sampler": "ddim", "ddim_steps": 2})
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    views = experiment.input_views()
    P, K = experiment.fields.channel("p"), experiment.fields.channel("K")
    assert [channel for channel, _ in views] == [P, P, P, K, K]
    fields = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().train))
    maps = experiment.channel_maps()
    q, log_k = maps[P].forward(fields[:, P]), maps[K].forward(fields[:, K])
    gradient = torch.tensor(experiment.mesh.nodal_gradient)
    for axis in range(2):
        torch.testing.assert_close(q @ views[1 + axis][1].T, fields[:, P] @ gradient[axis].T, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(log_k @ views[3 + axis][1].T, log_k @ gradient[axis].T)
    experiment.train()
    assert np.isfinite(experiment.sample(2)).all()


def test_physics_guided_run_samples_with_guidance(data_dir, tmp_path):
    config = small_config(
        model={"width": 8},
        diffusion={"method": "physics_guided", "T": 10},
        training={"steps": 2, "batch_size": 2},
        sampling={"sampler": "ddim", "ddim_steps": 2, "guidance_scale": 3.0},
    )
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    assert experiment.build_model().cond_channels == 2
    experiment.train()
    rows = experiment.sample(2)
    assert rows.shape == (2, 2 * experiment.fields.n_nodes) and np.isfinite(rows).all()


def test_raster_unet_on_the_paper_grid_is_exact():
    """On Firedrake's structured 64 x 64-node mesh, mesh -> raster -> mesh is an exact permutation round trip."""
    from pidm_fem.mesh import structured_grid_mesh

    V = fd.FunctionSpace(structured_grid_mesh(64), "CG", 1)
    nodes = NodeFields(FieldLayout.from_spaces({"p": V, "K": V})).mesh_nodes()
    unet = RasterUNet(nodes, 2, 2, width=8, raster_shape=(64, 64))
    for operator in (unet.to_raster, unet.to_mesh):
        matrix = operator.to_scipy().toarray()
        assert matrix.shape == (4096, 4096)
        assert np.array_equal(np.sort(matrix, axis=1)[:, -1], np.ones(4096)) and np.count_nonzero(matrix) == 4096
        assert np.array_equal(matrix.sum(axis=0), np.ones(4096))
    x = torch.randn(3, 2, 4096, dtype=torch.float64)
    round_trip = unet.to_mesh(unet.to_raster(x))
    assert torch.equal(round_trip, x)


def test_resume_equals_uninterrupted_training_with_the_fem_residual(data_dir, tmp_path):
    """Bit-for-bit on CPU: 6 steps in one go == 3 steps, stop, resume for 3, with the bridge in the loss."""
    def run(run_dir, steps):
        config = small_config(model={"width": 8}, training={"steps": steps, "batch_size": 2, "checkpoint_every": 3})
        return DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).train()

    run(tmp_path / "straight", 6)
    run(tmp_path / "resumed", 3)
    assert run(tmp_path / "resumed", 6).first_step == 3
    straight, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    for part in ("model", "ema", "optimizer"):
        _assert_identical(getattr(straight, part), getattr(resumed, part), part)


def test_resume_with_trajectory_states_equals_uninterrupted_training(data_dir, tmp_path):
    """Bit-for-bit: the trajectory batch drawn at step 4 and used at steps 5 and 6 comes back from the checkpoint."""
    def run(run_dir, steps):
        config = small_config(
            model={"width": 8},
            diffusion={"c_state": 1.0, "trajectory_every": 3, "trajectory_steps": 4, "trajectory_t_fraction": 0.6},
            training={"steps": steps, "batch_size": 2, "checkpoint_every": 4},
        )
        return DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).train()

    summary = run(tmp_path / "straight", 6)
    assert summary.components["state"] > 0
    run(tmp_path / "resumed", 4)
    assert run(tmp_path / "resumed", 6).first_step == 4
    straight, resumed = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    for part in ("model", "ema", "optimizer", "extra"):
        _assert_identical(getattr(straight, part), getattr(resumed, part), part)
    assert straight.extra["state.trajectory"]["calls"] == 6


def _assert_identical(a, b, where):
    """Recursive bit-for-bit equality of nested checkpoint states."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_cli_trains_and_samples(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {n_train: 4, n_val: 2, n_test: 2}\nmodel: {kind: mesh, width: 8}\ndiffusion: {T: 10}\n"
        "training: {steps: 2, batch_size: 2, checkpoint_every: 2}\nsampling: {sampler: ddim, ddim_steps: 2}\n"
    )
    common = [str(config), "--mesh", str(COARSE_MESH), "--run-dir", str(tmp_path / "run"),
              "--data-dir", str(tmp_path / "data")]
    cli = [sys.executable, "-m", "pidm_fem.cli"]
    train = subprocess.run(cli + ["darcy-train"] + common, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    out = tmp_path / "samples.npz"
    sample = subprocess.run(cli + ["darcy-sample"] + common + ["--n", "3", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
    saved = np.load(out)
    assert saved["rows"].shape[0] == 3 and saved["residual"].shape == (3, saved["rows"].shape[1] // 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {lr: -1}\n")
    failed = subprocess.run(cli + ["darcy-train", str(bad)], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == [
        f"pidm-fem: error: {bad}: training.lr: must be > 0, got -1.0"
    ], failed.stderr


def test_output_modes_confine_the_samples_to_the_training_datas_principal_subspace(data_dir, tmp_path):
    config = small_config(model={"width": 8, "output_modes": 3}, diffusion={"representation": "elliptic", "T": 10},
                          training={"steps": 2, "batch_size": 2}, sampling={"sampler": "ddim", "ddim_steps": 2})
    experiment = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    experiment.train()
    rows = experiment.sample(3)
    normalizer = experiment.fit_normalizer()
    samples = normalizer.normalize(experiment.fields.to_nodes(torch.as_tensor(rows)))
    train = normalizer.normalize(experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().train)))
    for channel in range(2):
        # every sample is the training mean plus a combination of the (centred) training samples
        centred = train[:, channel] - train[:, channel].mean(dim=0)
        coefficients = torch.linalg.lstsq(centred.T, (samples[:, channel] - train[:, channel].mean(dim=0)).T)
        fitted = centred.T @ coefficients.solution
        torch.testing.assert_close(fitted.T + train[:, channel].mean(dim=0), samples[:, channel],
                                   rtol=0, atol=1e-4)  # sampled in float32; the fields are of order 1


def test_a_low_noise_expert_trains_below_its_split_beside_the_frozen_model_and_samples_with_it(data_dir, tmp_path):
    """diffusion.expert_below: the pair's high expert keeps the full-range run's weights, its low one learns."""
    from pidm_fem.diffusion import TimestepExperts

    trajectory = {"c_state": 1.0, "trajectory_every": 2, "trajectory_steps": 4, "trajectory_t_fraction": 0.5}
    full_config = small_config(model={"width": 8}, diffusion=trajectory, training={"steps": 4, "batch_size": 2})
    full = DarcyExperiment(full_config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "full", progress=False)
    full.train()
    high, _ = full.load_denoiser()

    config = small_config(model={"width": 8}, diffusion={**trajectory, "expert_below": 5},
                          training={"steps": 4, "batch_size": 2})
    expert = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "expert", progress=False)
    with pytest.raises(ConfigError, match="expert_below: the expert run .* starts from a full-range denoiser"):
        expert.trainer()
    with pytest.raises(ConfigError, match="trains no expert beside a frozen model"):
        full.trainer(high)
    summary = expert.train(high)
    assert summary.components["state"] > 0  # the trajectory states of the pair reach the expert's loss

    # Every timestep the loss drew lies below the split, and so do the trajectory states.
    loss = diffusion_loss(config.diffusion, expert.schedule, expert.fit_normalizer(), expert.residual,
                          state_misfit=expert.state_misfit)
    assert loss.max_t == 5 and loss.trajectory.max_t == 5

    pair, _ = expert.load_denoiser()
    assert isinstance(pair, TimestepExperts) and pair.split == 5
    for key, value in high.state_dict().items():
        assert torch.equal(pair.high.state_dict()[key], value), key
    fresh = expert.build_model()
    assert any(not torch.equal(a, b) for a, b in zip(pair.low.parameters(), fresh.low.parameters()))
    assert all(not p.requires_grad for p in fresh.high.parameters())
    rows = expert.sample(3, seed=1)
    assert rows.shape == (3, 2 * expert.fields.n_nodes) and np.all(np.isfinite(rows))
    # diffusion.expert_start: full_range starts the expert as a copy of the full-range model
    warm_config = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, expert_start="full_range"))
    warm = DarcyExperiment(warm_config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "warm", progress=False)
    warm_low = warm.trainer(high).model.low
    for key, value in high.state_dict().items():
        assert torch.equal(warm_low.state_dict()[key], value), key

    # model.expert_width: the expert's own network is wider, the frozen model keeps its run's width
    wide_config = dataclasses.replace(config, model=dataclasses.replace(config.model, expert_width=16))
    wide = DarcyExperiment(wide_config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "wide", progress=False)
    wide_pair = wide.trainer(high).model
    assert wide_pair.low.decoder[0].in_features == 16 and wide_pair.high.decoder[0].in_features == 8
    with pytest.raises(ConfigError, match="model.expert_width: needs an expert run"):
        small_config(model={"expert_width": 16})
    with pytest.raises(ConfigError, match="'full_range' copies the full-range network .width 8. into the expert"):
        small_config(model={"width": 8, "expert_width": 16}, diffusion={"expert_below": 5, "expert_start": "full_range"})

    with pytest.raises(ConfigError, match="must be at most T = 20"):
        diffusion_loss(dataclasses.replace(config.diffusion, expert_below=21), expert.schedule,
                       expert.fit_normalizer(), expert.residual)
    with pytest.raises(ConfigError, match="cannot be physics_guided"):
        diffusion_loss(dataclasses.replace(config.diffusion, method="physics_guided"), expert.schedule,
                       expert.fit_normalizer(), expert.residual)


#: the trajectory-state keys of the tiny expert runs
TINY_TRAJECTORY = {"c_state": 1.0, "trajectory_every": 2, "trajectory_steps": 4, "trajectory_t_fraction": 0.5}


@pytest.fixture(scope="module")
def full_range_and_ddpm_runs(data_dir, tmp_path_factory):
    """Two finished tiny runs: a full-range PIDM-trajectory model and a DDPM model (experiments by name)."""
    runs = {}
    for name, diffusion in (("full", TINY_TRAJECTORY), ("ddpm", {"method": "ddpm"})):
        config = small_config(model={"width": 8}, diffusion=diffusion, training={"steps": 4, "batch_size": 2})
        runs[name] = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path_factory.mktemp(name),
                                     progress=False)
        runs[name].train()
    return runs


@pytest.mark.parametrize("steps", ["all", "high"])
def test_a_frozen_coefficient_run_trains_its_pressure_on_another_models_coefficient(
    data_dir, tmp_path, full_range_and_ddpm_runs, steps
):
    """diffusion.frozen_coefficient: K's estimate is the frozen model's at every step (or at the full-range
    model's steps only, the expert's own below); the run learns p, and with "high" K below the split too."""
    from pidm_fem.diffusion import ChannelExperts, TimestepExperts

    trajectory, runs = TINY_TRAJECTORY, full_range_and_ddpm_runs
    high, _ = runs["full"].load_denoiser()
    coefficient, _ = runs["ddpm"].load_denoiser()

    frozen = {"expert_below": 5, "frozen_coefficient": True, "frozen_coefficient_steps": steps}
    config = small_config(model={"width": 8}, diffusion={**trajectory, **frozen}, training={"steps": 4, "batch_size": 2})
    expert = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "expert", progress=False)
    with pytest.raises(ConfigError, match="frozen_coefficient: the run .* starts from the denoiser of its coefficient"):
        expert.trainer(high)
    with pytest.raises(ConfigError, match="takes no coefficient model"):
        runs["full"].trainer(coefficient=coefficient)
    fresh = expert.build_model()
    summary = expert.train(high, coefficient)
    assert summary.components["state"] > 0  # the composed chains' states reach the loss

    model, _ = expert.load_denoiser()
    if steps == "all":
        assert isinstance(model, ChannelExperts) and isinstance(model.base, TimestepExperts)
        composition = model
        other, frozen_high, low, fresh_low = model.other, model.base.high, model.base.low, fresh.base.low
    else:
        assert isinstance(model, TimestepExperts) and isinstance(model.high, ChannelExperts)
        composition = model.high
        other, frozen_high, low, fresh_low = model.high.other, model.high.base, model.low, fresh.low
    assert composition.channels == expert.coefficient_channels() == (1,)
    for part, source in ((other, coefficient), (frozen_high, high)):
        for key, value in source.state_dict().items():
            assert torch.equal(part.state_dict()[key], value), key
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == sum(p.numel() for p in fresh_low.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(low.parameters(), fresh_low.parameters()))
    # each step's estimate: K from the frozen model where it acts, p from the trained pair (to the rounding of
    # float32 networks on the smaller batches that TimestepExperts routes)
    x, t = torch.randn(3, 2, expert.fields.n_nodes), torch.tensor([1, 4, 12])
    with torch.no_grad():
        composed, own, other_estimate = model(x, t), low(x, t), coefficient(x, t)
        full_range = high(x, t)
    takes_other = t >= 0 if steps == "all" else t >= 5
    torch.testing.assert_close(composed[takes_other, 1], other_estimate[takes_other, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(composed[~takes_other, 1], own[~takes_other, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(composed[t < 5, 0], own[t < 5, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(composed[t >= 5, 0], full_range[t >= 5, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(composed[t < 5, 0], other_estimate[t < 5, 0])
    rows = expert.sample(2, seed=1)
    assert rows.shape == (2, 2 * expert.fields.n_nodes) and np.all(np.isfinite(rows))
    # diffusion.expert_start: full_range starts the expert (not the frozen coefficient) as the full-range model
    warm_config = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, expert_start="full_range"))
    warm = DarcyExperiment(warm_config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "warm", progress=False)
    warm_model = warm.trainer(high, coefficient).model
    warm_low = warm_model.base.low if steps == "all" else warm_model.low
    for key, value in high.state_dict().items():
        assert torch.equal(warm_low.state_dict()[key], value), key
    # a pair trained without a frozen coefficient, composed afterwards, has the trained composition's structure
    unfrozen = {**trajectory, "expert_below": 5}
    plain = DarcyExperiment(small_config(model={"width": 8}, diffusion=unfrozen), COARSE_MESH, data_dir=data_dir,
                            run_dir=tmp_path / "plain", progress=False)
    assert plain.with_coefficient_of(plain.build_model(), coefficient, steps).state_dict().keys() == fresh.state_dict().keys()
    with pytest.raises(ConfigError, match="must be 'all' or 'high', got 'low'"):
        plain.with_coefficient_of(plain.build_model(), coefficient, "low")

    guided = small_config(model={"width": 8}, diffusion={"method": "physics_guided", "frozen_coefficient": True})
    with pytest.raises(ConfigError, match="frozen_coefficient: a physics-guided model's condition channels"):
        DarcyExperiment(guided, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "guided", progress=False).build_model()
    alone = small_config(model={"width": 8}, diffusion={"frozen_coefficient": True, "frozen_coefficient_steps": "high"})
    with pytest.raises(ConfigError, match="frozen_coefficient_steps: 'high' needs a low-noise expert"):
        DarcyExperiment(alone, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "alone", progress=False).build_model()


def test_an_expert_given_the_frozen_coefficient_estimate_sees_it_in_place_of_the_noisy_coefficient(
    data_dir, tmp_path, full_range_and_ddpm_runs
):
    """diffusion.coefficient_input: estimate: the expert network's K input is the frozen model's clean
    estimate, the same module as the composition's K (so trained and sampled consistently)."""
    from pidm_fem.diffusion import EstimatedChannelInputs

    high, _ = full_range_and_ddpm_runs["full"].load_denoiser()
    coefficient, _ = full_range_and_ddpm_runs["ddpm"].load_denoiser()
    given = {**TINY_TRAJECTORY, "expert_below": 5, "frozen_coefficient": True, "coefficient_input": "estimate"}
    config = small_config(model={"width": 8}, diffusion=given, training={"steps": 4, "batch_size": 2})
    expert = DarcyExperiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "given", progress=False)
    fresh = expert.build_model()
    assert isinstance(fresh.base.low, EstimatedChannelInputs) and fresh.base.low.estimator is fresh.other
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == sum(
        p.numel() for p in fresh.base.low.network.parameters())
    summary = expert.train(high, coefficient)
    assert summary.components["state"] > 0

    model, _ = expert.load_denoiser()
    low, other = model.base.low, model.other
    assert low.estimator is other and low.channels == expert.coefficient_channels() == (1,)
    for key, value in coefficient.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    x, t = torch.randn(3, 2, expert.fields.n_nodes), torch.tensor([1, 4, 12])
    with torch.no_grad():
        composed, other_estimate = model(x, t), coefficient(x, t)
        given_input = torch.stack([x[:, 0], other_estimate[:, 1]], dim=1)
        own_given, own_noisy = low.network(given_input, t), low.network(x, t)
    torch.testing.assert_close(composed[:, 1], other_estimate[:, 1], rtol=0, atol=1e-6)
    torch.testing.assert_close(composed[t < 5, 0], own_given[t < 5, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(own_given[t < 5, 0], own_noisy[t < 5, 0])  # the input it sees is not x's K
    rows = expert.sample(2, seed=1)
    assert rows.shape == (2, 2 * expert.fields.n_nodes) and np.all(np.isfinite(rows))
    # the warm start copies the full-range model into the expert network, not around it
    warm_config = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, expert_start="full_range"))
    warm = DarcyExperiment(warm_config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "warm", progress=False)
    warm_network = warm.trainer(high, coefficient).model.base.low.network
    for key, value in high.state_dict().items():
        assert torch.equal(warm_network.state_dict()[key], value), key

    for diffusion in ({"coefficient_input": "estimate"},
                      {"expert_below": 5, "frozen_coefficient": True, "frozen_coefficient_steps": "high",
                       "coefficient_input": "estimate"}):
        with pytest.raises(ConfigError, match="coefficient_input: 'estimate' needs a frozen coefficient at every step"):
            small_config(diffusion=diffusion)
