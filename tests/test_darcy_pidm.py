"""The Darcy PIDM case study: conversions, model factory, losses through the bridge, runs end to end."""

import dataclasses

import firedrake as fd
import numpy as np
import pytest
import torch

from pidm_fem.bridge import FieldLayout
from pidm_fem.experiments import Experiment, NodeFields, build_denoiser, diffusion_loss
from pidm_fem.physics.darcy_flow import DarcyFlow
from pidm_fem.mesh import unit_square_family
from pidm_fem.models import MeshDenoiser, RasterUNet, count_parameters
from pidm_fem.physics.darcy import DarcyProblem
from pidm_fem.physics.field_maps import neumann_laplacian_maps
from pidm_fem.training import CheckpointError, ConfigError, config_from_dict, load_checkpoint, load_config
from pidm_fem.training.config import ModelConfig

COARSE_MESH = unit_square_family()[0]


def darcy_experiment(config, mesh, **kwargs):
    """The generic experiment of the Darcy problem on ``mesh`` with the configuration's data seed."""
    return Experiment(DarcyFlow.from_options(mesh, seed=config.data.seed), config, **kwargs)


def small_config(**sections):
    """A tiny run on the coarse mesh in the paper's coordinates: 4 training samples, small mesh denoiser."""
    base = {
        "preset": "paper",
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
    return darcy_experiment(
        small_config(), COARSE_MESH, data_dir=data_dir, run_dir=tmp_path_factory.mktemp("run"), progress=False
    )


# ---------------------------------------------------------------- rows <-> node tensors


def test_node_fields_reshape_rows_and_keep_the_physics(experiment):
    fields, layout = experiment.fields, experiment.problem.layout
    rows = experiment.dataset().train
    x = fields.to_nodes(torch.from_numpy(rows))
    assert x.shape == (4, 2, fields.n_nodes) and fields.names == ("p", "K")
    np.testing.assert_array_equal(x[:, fields.channel("p")].numpy(), rows[:, layout.block("p")])
    np.testing.assert_array_equal(x[:, fields.channel("K")].numpy(), rows[:, layout.block("K")])
    np.testing.assert_array_equal(fields.to_rows(x).numpy(), rows)
    # The data solve the PDE through the (B, C, n) path; swapping the channels does not.
    f_max = float(np.abs(experiment.problem.pde.f.dat.data_ro).max())
    assert experiment.residual(x).abs().max() < 1e-8 * f_max
    assert experiment.residual(x.flip(1)).abs().max() > 1e-2 * f_max
    with pytest.raises(ValueError, match=r"shape \(B, 2,"):
        fields.to_rows(x[:, :1])


def test_physics_residual_follows_the_config_and_the_reported_one_stays_strong(experiment, data_dir, tmp_path):
    x = experiment.fields.to_nodes(torch.from_numpy(experiment.dataset().train))
    wrong = x.clone()
    wrong[:, 0] *= 1.5
    preconditioned = darcy_experiment(small_config(diffusion={"residual": "preconditioned"}), COARSE_MESH,
                                     data_dir=data_dir, run_dir=tmp_path, progress=False)
    torch.testing.assert_close(preconditioned.strong_residual(wrong), experiment.residual(wrong), rtol=0, atol=0)
    torch.testing.assert_close(experiment.strong_residual(wrong), experiment.residual(wrong), rtol=0, atol=0)
    expected = experiment.residual(wrong) @ torch.from_numpy(
        neumann_laplacian_maps(experiment.problem.pde.V)[1].T.copy())
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
    weights = experiment.problem.pde.lumped_mass()
    expected = relative_state_error(experiment.solve_state, other.detach() - torch.tensor([3.0, 0.0])[:, None],
                                     0, weights)
    np.testing.assert_allclose(misfit.pow(2).sum(dim=1).sqrt().detach().numpy(), expected, rtol=1e-10)
    misfit.pow(2).sum().backward()
    assert other.grad[:, 0].abs().sum() > 0 and other.grad[:, 1].abs().sum() == 0
    bad = x.clone()
    bad[1, 1, 0] = -1.0
    assert torch.equal(experiment.state_misfit(bad)[1], torch.zeros(x.shape[2], dtype=x.dtype))


def test_node_fields_take_vector_fields_on_other_spaces_at_the_same_nodes_and_refuse_others(experiment):
    p1 = experiment.problem.pde.V
    mesh = p1.mesh()
    p2 = DarcyProblem(mesh, degree=2).V
    # a P1 vector displacement beside a P1 scalar density: three channels on the vertices
    vector = fd.VectorFunctionSpace(mesh, "CG", 1)
    layout = FieldLayout.from_spaces({"u": vector, "rho": p1})
    fields = NodeFields(layout)
    assert fields.names == ("u_x", "u_y", "rho") and fields.channels_of(("u",)) == (0, 1)
    u = fd.Function(vector).interpolate(fd.SpatialCoordinate(mesh))
    rho = fd.Function(p1).interpolate(fd.SpatialCoordinate(mesh)[0] * 2 + 1)
    rows = torch.from_numpy(layout.join({"u": u.dat.data_ro.reshape(1, -1), "rho": rho.dat.data_ro[None]}))
    nodes = fields.to_nodes(rows)
    coordinates = fields.node_coordinates
    np.testing.assert_allclose(nodes[0, 0].numpy(), coordinates[:, 0], atol=1e-14)  # u_x = x at every node
    np.testing.assert_allclose(nodes[0, 1].numpy(), coordinates[:, 1], atol=1e-14)
    np.testing.assert_allclose(nodes[0, 2].numpy(), 2 * coordinates[:, 0] + 1, atol=1e-14)
    torch.testing.assert_close(fields.to_rows(nodes), rows)  # the round trip
    # a subset of the fields as channels: the others come from the rows given
    density = NodeFields(layout, ["rho"])
    torch.testing.assert_close(density.to_rows(density.to_nodes(rows), rows), rows)
    with pytest.raises(ValueError, match="need the values of the non-channel fields"):
        density.to_rows(density.to_nodes(rows))
    with pytest.raises(ValueError, match="has .* nodes, the first field"):
        NodeFields(FieldLayout.from_spaces({"p": p1, "K": p2}))
    with pytest.raises(ValueError, match="has .* nodes, the first field"):
        NodeFields(FieldLayout.from_spaces({"p": p1, "rho": fd.FunctionSpace(mesh, "DG", 0)}))
    with pytest.raises(ValueError, match="P1 fields"):
        NodeFields(FieldLayout.from_spaces({"p": p2, "K": p2})).mesh_nodes()
    nodes_mesh = experiment.mesh
    assert nodes_mesh.n_nodes == experiment.fields.n_nodes == p1.dof_count
    assert nodes_mesh.n_triangles == mesh.num_cells()


# ---------------------------------------------------------------- model factory and losses


def test_build_denoiser_kinds_and_config_errors(experiment):
    mesh = experiment.mesh
    unet_config = ModelConfig(kind="unet", width=8, input_products=False)
    unet = build_denoiser(unet_config, mesh, 2, cond_channels=2, n_timesteps=20)
    net = build_denoiser(ModelConfig(kind="mesh", width=8, input_products=False), mesh, 2, n_timesteps=20)
    assert isinstance(unet, RasterUNet) and unet.cond_channels == 2
    assert isinstance(net, MeshDenoiser) and net.cond_channels == 0
    x, t = torch.zeros(3, 2, mesh.n_nodes), torch.tensor([0, 5, 19])
    assert unet(x, t, cond=x).shape == net(x, t).shape == (3, 2, mesh.n_nodes)
    no_attention = ModelConfig(kind="unet", width=8, attention=False, input_products=False)
    without = build_denoiser(no_attention, mesh, 2, cond_channels=2, n_timesteps=20)
    assert count_parameters(without) < count_parameters(unet)
    with pytest.raises(ConfigError, match="model.width: must be even"):
        build_denoiser(ModelConfig(kind="unet", width=7, input_products=False), mesh, 2)
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
    model = experiment.build_model().model
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
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
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
        "sampling: {sampler: ddim, ddim_steps: 3, n_samples: 3}\ncocogen: {during: 1, after: 1, step: 1e-6}\n"
    )
    config = load_config(path)
    run_dir = tmp_path / "run"
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False)
    data_file = experiment.data_path()
    splits = experiment.dataset()
    assert data_file.is_file() and [len(s) for s in (splits.train, splits.val, splits.test)] == [4, 2, 2]
    assert experiment.train().last_step == 4

    stamp = data_file.stat().st_mtime_ns
    longer = dataclasses.replace(config, training=dataclasses.replace(config.training, steps=6))
    resumed = darcy_experiment(longer, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False)
    summary = resumed.train()
    assert (summary.first_step, summary.last_step) == (4, 6)
    assert data_file.stat().st_mtime_ns == stamp  # the cached samples were reused
    checkpoint = load_checkpoint(run_dir / "last.pt")
    assert checkpoint.step == 6 and checkpoint.mesh_fingerprint == experiment.fingerprint
    normalizer = experiment.fit_normalizer().state_dict()
    torch.testing.assert_close(checkpoint.extra["normalizer"]["std"], normalizer["std"])

    rows = resumed.sample()
    assert rows.shape == (3, 2 * experiment.fields.n_nodes) and np.isfinite(rows).all()
    weights = experiment.problem.pde.lumped_mass()
    p = rows[:, experiment.problem.layout.block("p")]
    assert np.abs(p @ weights).max() < 1e-12 * np.abs(p).max() * weights.sum()
    np.testing.assert_array_equal(resumed.sample(seed=0), rows)  # seeded
    corrected = resumed.sample(seed=0, cocogen=True)
    assert corrected.shape == rows.shape and not np.array_equal(corrected, rows)  # CoCoGen moved the samples

    other = dataclasses.replace(config, model=dataclasses.replace(config.model, width=12))
    with pytest.raises(CheckpointError, match="another model configuration"):
        darcy_experiment(other, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).sample(2)


def test_elliptic_representation_round_trips_the_data_and_samples_positive_k(data_dir, tmp_path):
    config = small_config(
        model={"width": 8},
        diffusion={"representation": "elliptic", "T": 10},
        training={"steps": 2, "batch_size": 2},
        sampling={"sampler": "ddim", "ddim_steps": 2},
    )
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
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
    assert np.isfinite(rows).all() and rows[:, experiment.problem.layout.block("K")].min() > 0


def test_field_views_show_the_network_the_pressure_under_elliptic_coordinates(data_dir, tmp_path):
    config = small_config(model={"width": 8, "field_views": True}, diffusion={"representation": "elliptic", "T": 10},
                          training={"steps": 2, "batch_size": 2}, sampling={"sampler": "ddim", "ddim_steps": 2})
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    views = experiment.input_views()
    assert [channel for channel, _ in views] == [experiment.fields.channel("p")]
    experiment.train()
    rows = experiment.sample(2)
    assert np.isfinite(rows).all()
    # the view is the pressure: the map G takes the Laplacian coordinates back to p (of zero mean)
    p = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().train))[:, 0]
    q = experiment.channel_maps()[0].forward(p)
    torch.testing.assert_close(q @ views[0][1].T, p, rtol=1e-8, atol=1e-12)
    with pytest.raises(ConfigError, match="model.field_views: no field is linearly mapped"):
        dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, representation="nodal"))


def test_gradient_views_are_the_recovered_gradients_of_the_physical_fields(data_dir, tmp_path):
    config = small_config(model={"width": 8, "field_views": True, "gradient_views": True},
                          diffusion={"representation": "elliptic", "T": 10},
                          training={"steps": 2, "batch_size": 2}, sampling={"sampler": "ddim", "ddim_steps": 2})
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
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
    experiment = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path, progress=False)
    assert experiment.build_model().model.cond_channels == 2
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
        return darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).train()

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
        return darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=run_dir, progress=False).train()

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


#: trajectory states and state misfit of the tiny expert runs
TINY_TRAJECTORY = {"trajectory_every": 1, "trajectory_steps": 2, "trajectory_t_fraction": 0.5, "c_state": 1.0}


def test_an_expert_on_a_frozen_coefficient_learns_below_its_split_beside_frozen_models(data_dir, tmp_path):
    """diffusion.role: expert_on_frozen_coefficient: K from a frozen model at every step, p from the pair of a
    frozen full-range model and the trained low-noise expert below expert.below."""
    small = {"model": {"width": 8}, "training": {"steps": 2, "batch_size": 2}}
    high_run = darcy_experiment(small_config(diffusion=TINY_TRAJECTORY, **small), COARSE_MESH, data_dir=data_dir,
                               run_dir=tmp_path / "high", progress=False)
    high_run.train()
    coefficient_run = darcy_experiment(small_config(diffusion={"method": "ddpm"}, **small), COARSE_MESH,
                                      data_dir=data_dir, run_dir=tmp_path / "coefficient", progress=False)
    coefficient_run.train()
    (high, _), (coefficient, _) = high_run.load_denoiser(), coefficient_run.load_denoiser()
    with pytest.raises(ConfigError, match="trains no expert beside a frozen model"):
        high_run.trainer(high)

    config = small_config(diffusion={**TINY_TRAJECTORY, "trajectory_steps": 4, "role": "expert_on_frozen_coefficient"},
                          expert={"below": 5, "width": 16}, model={"width": 8}, training={"steps": 4, "batch_size": 2})
    expert = darcy_experiment(config, COARSE_MESH, data_dir=data_dir, run_dir=tmp_path / "expert", progress=False)
    with pytest.raises(ConfigError, match="the expert run .* starts from a full-range denoiser"):
        expert.trainer()
    with pytest.raises(ConfigError, match="starts from the denoiser of its coefficient"):
        expert.trainer(high)
    parts = expert.build_model()
    assert all(p.requires_grad for p in parts.trained.parameters())
    assert not any(p.requires_grad for part in (parts.full_range, parts.coefficient) for p in part.parameters())
    assert count_parameters(parts.trained) > count_parameters(parts.full_range)  # expert.width 16 against 8
    summary = expert.train(high, coefficient)
    assert summary.components["state"] > 0  # the trajectory states of the composition reach the expert's loss

    model, _ = expert.load_denoiser()
    x, t = torch.randn(3, 2, expert.fields.n_nodes), torch.tensor([1, 4, 12])
    with torch.no_grad():
        out, k_only, high_only = model(x, t), coefficient(x, t), high(x, t)
    torch.testing.assert_close(out[:, 1], k_only[:, 1])  # K is the frozen coefficient model's at every step
    torch.testing.assert_close(out[2, 0], high_only[2, 0])  # p is the frozen full-range model's at t >= 5
    assert not torch.allclose(out[:2, 0], high_only[:2, 0])  # and the trained expert's below
    rows = expert.sample(2, seed=1)
    assert rows.shape == (2, 2 * expert.fields.n_nodes) and np.all(np.isfinite(rows))
    # the physics-exact reference: the coefficient's own FEM pressure solves the discrete problem
    exact = expert.with_solved_state(rows)
    np.testing.assert_array_equal(exact[:, expert.problem.layout.block("K")], rows[:, expert.problem.layout.block("K")])
    with torch.no_grad():
        assert expert.strong_residual(expert.fields.to_nodes(torch.from_numpy(exact))).abs().max() < 1e-8
