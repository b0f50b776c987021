"""The topology case study's samples and physics: SIMP optima of random problems, batched through the bridge."""

import firedrake as fd
import meshio
import numpy as np
import pytest
import torch

from pidm_fem.physics.topology import TopologyDesign
from pidm_fem.physics.topology_data import SPLITS, TopologyDataSettings, draw_problem, load_position


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """The topology problem on a small 2 x 1 rectangle (20 x 10 squares cut into triangles)."""
    mesh = fd.RectangleMesh(20, 10, 2.0, 1.0)
    path = tmp_path_factory.mktemp("topology") / "rectangle.msh"
    cells = mesh.coordinates.cell_node_map().values
    points = mesh.coordinates.dat.data_ro
    edges, tags = [], []  # the boundary edges, tagged as RectangleMesh tags them
    for tag, test in ((1, lambda p: np.isclose(p[:, 0], 0)), (2, lambda p: np.isclose(p[:, 0], 2)),
                      (3, lambda p: np.isclose(p[:, 1], 0)), (4, lambda p: np.isclose(p[:, 1], 1))):
        on = test(points)
        for cell in cells:
            for a, b in ((cell[0], cell[1]), (cell[1], cell[2]), (cell[2], cell[0])):
                if on[a] and on[b]:
                    edges.append(sorted((a, b)))
                    tags.append(tag)
    edges, unique = np.unique(np.array(edges), axis=0, return_index=True)
    meshio.write(path, meshio.Mesh(np.column_stack([points, np.zeros(len(points))]),
                                   [("triangle", cells), ("line", edges)],
                                   cell_data={"gmsh:physical": [np.full(len(cells), 10), np.array(tags)[unique]],
                                              "gmsh:geometrical": [np.full(len(cells), 1), np.array(tags)[unique]]}),
                 file_format="gmsh22", binary=False)
    return TopologyDesign(TopologyDataSettings(mesh=str(path), rmin=0.15, max_iterations=60))


def test_draws_stay_in_their_split_ranges():
    rng = np.random.default_rng(0)
    for split, ranges in SPLITS.items():
        for _ in range(200):
            drawn = draw_problem(rng, split)
            assert any(a <= drawn.s < b or (b == 1.0 and drawn.s == 1.0) for a, b in ranges["s"])
            assert any(a <= drawn.volfrac <= b for a, b in ranges["volfrac"])
            assert -180 <= drawn.angle <= 0
    low, high = np.zeros(2), np.array([2.0, 1.0])
    assert load_position(0.0, low, high) == (0.0, 1.0) and load_position(1.0, low, high) == (2.0, 0.0)
    assert load_position(2 / 3, low, high) == (2.0, 1.0)


def test_no_load_lands_on_a_support(problem):
    from pidm_fem.physics.topology_data import RandomProblem

    generator = problem.generator
    on = {(family, s): generator._load_on_support(RandomProblem(family, s, -90.0, 0.4))
          for family in ("clamped", "pinned", "rollers") for s in (0.0, 0.5, 1.0)}
    assert on == {("clamped", 0.0): True, ("clamped", 0.5): False, ("clamped", 1.0): False,
                  ("pinned", 0.0): False, ("pinned", 0.5): False, ("pinned", 1.0): True,
                  ("rollers", 0.0): True, ("rollers", 0.5): False, ("rollers", 1.0): True}
    assert not any(generator._load_on_support(generator.problem(i)) for i in range(300))


def test_a_sample_is_a_simp_optimum_with_its_conditions(problem):
    record = problem.generator.record(3)
    row = record["row"]
    assert np.array_equal(row, problem.sample(3))  # deterministic
    fields = problem.layout.split(row[None])
    rho, volfrac = fields["rho"][0], fields["volfrac"][0, 0]
    assert rho.min() >= 0 and rho.max() <= 1
    assert abs(problem.weights() @ rho / problem.weights().sum() - volfrac) < 1e-3
    assert np.allclose(fields["load"][0].reshape(-1, 2).sum(axis=0), _force(record["problem"].angle))
    assert fields["support"][0].sum() >= 2 and (fields["strain_energy"][0] >= -1e-12).all()
    assert record["iterations"] <= 60 and isinstance(record["capped"], bool)
    x = torch.tensor(row[None])
    r = problem.torch_residual("strong")(x)
    scale = np.abs(fields["load"][0]).max() / problem.lumped_mass.min()
    assert r.abs().max().item() < 1e-9 * scale  # the data's own floor
    compliance = problem.functionals()["objective"](x).item()
    assert abs(compliance / record["compliance"] - 1) < 1e-8


def _force(angle):
    return np.cos(np.radians(angle)), np.sin(np.radians(angle))


def test_batched_residual_and_compliance_match_a_direct_assembly_and_pass_a_taylor_test(problem):
    rng = np.random.default_rng(1)
    row = problem.sample(5)
    drawn = problem.generator.problem(5)
    elasticity = problem.generator.elasticity(drawn)
    layout = problem.layout
    u = fd.Function(elasticity.V)
    rho = fd.Function(elasticity.D)
    blocks = layout.split(row[None])
    u.dat.data[:] = (blocks["u"][0] + 1e-3 * rng.normal(size=blocks["u"].shape[1])).reshape(-1, 2)
    rho.dat.data[:] = np.clip(blocks["rho"][0] + 0.05 * rng.normal(size=blocks["rho"].shape[1]), 0.05, 0.95)  # inside the projection
    for bc in elasticity.bcs:  # the supports, imposed as the problem imposes them
        bc.apply(u)
    x = row.copy()
    x[layout.block("u")] = u.dat.data_ro.ravel()
    x[layout.block("rho")] = rho.dat.data_ro
    xt = torch.tensor(x[None], requires_grad=True)
    batched = problem.torch_residual("strong")(xt).detach().numpy().reshape(-1, 2)
    direct = elasticity.strong_residual(u, rho)
    assert np.abs(batched - direct).max() < 1e-10 * np.abs(direct).max()
    energy = fd.assemble(elasticity.bilinear(u, u, rho))
    assert abs(problem.functionals()["objective"](xt).item() / energy - 1) < 1e-12

    def J(y):
        return (problem.torch_residual("weak")(y) ** 2).sum() + problem.functionals()["objective"](y).sum()

    value = J(xt)
    value.backward()
    direction = torch.zeros_like(xt)
    generated = np.r_[np.arange(layout.block("u").start, layout.block("u").stop),
                      np.arange(layout.block("rho").start, layout.block("rho").stop)]
    direction[0, generated] = torch.tensor(rng.uniform(-1, 1, len(generated)) * 1e-2)
    slope = (xt.grad * direction).sum()
    errors = [abs((J(xt.detach() + h * direction) - value - h * slope).item()) for h in (1.0, 0.5, 0.25)]
    assert all(np.log2(errors[i] / errors[i + 1]) > 1.9 for i in range(2)), errors


def test_a_conditional_pidm_trains_and_samples_given_the_conditions(problem, tmp_path):
    """The experiment feeds the condition fields to the network and to the physics, and samples for given ones."""
    from pidm_fem.experiments.experiment import Experiment
    from pidm_fem.training import config_from_dict

    config = config_from_dict({
        "preset": "paper",
        "data": {"n_train": 4, "n_val": 1, "n_test": 2, "seed": 0},
        "model": {"kind": "mesh", "width": 8, "gradient_views": False, "input_products": False},
        "diffusion": {"T": 10, "method": "pidm", "c_residual": 1e-6, "c_eq": 1.0, "lambda_opt": 1e-6},
        "training": {"batch_size": 2, "steps": 3, "ema_start": 0, "log_every": 1, "checkpoint_every": 3},
        "sampling": {"sampler": "ddim", "ddim_steps": 2},
    })
    experiment = Experiment(problem, config, data_dir=tmp_path / "data", run_dir=tmp_path / "run", progress=False)
    summary = experiment.train()
    assert summary.last_step == 3 and summary.components["constraints"] > 0 and summary.components["residual"] > 0
    test = experiment.dataset().test
    rows = experiment.sample(conditions=test, seed=0)
    assert rows.shape == test.shape and np.isfinite(rows).all()
    for name in problem.conditions:  # the conditions are the given ones
        assert np.array_equal(rows[:, problem.layout.block(name)], test[:, problem.layout.block(name)])
    generated = problem.layout.block("rho")
    assert not np.array_equal(rows[:, generated], test[:, generated])
    with pytest.raises(Exception, match="sampled for given conditions"):
        experiment.sample(2)


def _design(problem, row, rho):
    design = row.copy()
    design[problem.layout.block("rho")] = rho
    return design


def test_the_judge_rebuilds_the_problem_and_finds_islands_and_missed_loads(problem):
    """Hand-made designs: solid, with an island, without material at the load; the SIMP data against themselves."""
    from pidm_fem.experiments.topology_study import judge_rows

    row = problem.sample(3)
    judge = problem.judge
    nodes = judge.nodes
    solid = _design(problem, row, np.ones(len(nodes)))
    judged = judge.judge(solid)
    assert judged["solid_components"] == 1 and not judged["floating"] and not judged["load_disrespect"]
    assert judged["volume_fraction"] == pytest.approx(1.0)
    # the rebuilt supports and load give the compliance of the generator's own problem, solid everywhere
    elasticity = problem.generator.elasticity(problem.generator.problem(3))
    elasticity.solve(np.ones(elasticity.D.dof_count))
    assert judged["compliance"] == pytest.approx(elasticity.compliance(), rel=1e-10)

    centre = np.array([1.0, 0.5])
    distance = np.linalg.norm(nodes - centre, axis=1)
    island = _design(problem, row, np.where((distance > 0.22) & (distance < 0.45), 0.0, 1.0))
    assert judge.judge(island)["floating"]
    centroids = nodes[judge.cells].mean(axis=1)
    apart = np.abs(centroids - centre).max(axis=1)  # squares of the grid's lines
    assert judge.solid_components((apart < 0.2) | (apart > 0.4)) == 2  # an island inside a plate
    assert judge.solid_components(apart > 0.4) == 1 and judge.solid_components(apart < 0) == 0

    load_node = judge.loaded_nodes(row)
    assert len(load_node) == 1
    near_load = np.linalg.norm(nodes - nodes[load_node[0]], axis=1) < 0.25
    missed = judge.judge(_design(problem, row, np.where(near_load, 0.0, 1.0)))
    assert missed["load_disrespect"] and not missed["floating"]

    reference = np.array([judge.judge(row)["compliance"]])
    own = judge_rows(problem, row[None], reference, progress=False)
    assert own["compliance_error_mean"] == 0 and own["residual_mean"] < 1e-9 * np.abs(row).max() / judge.cell_areas.min()
    stiffer = judge_rows(problem, solid[None], reference, progress=False)
    assert stiffer["compliance_error_mean"] < 0  # more material, less compliance
    assert stiffer["volume_fraction_error_mean"] == pytest.approx((1 - row[problem.layout.block("volfrac")][0])
                                                                  / row[problem.layout.block("volfrac")][0])


def test_the_physics_sees_the_density_projected_onto_zero_one(problem):
    row = problem.sample(2)
    layout = problem.layout
    over = row.copy()
    over[layout.block("rho")] = np.where(row[layout.block("rho")] > 0.5, 1.7, -0.4)
    clipped = row.copy()
    clipped[layout.block("rho")] = np.where(row[layout.block("rho")] > 0.5, 1.0, 0.0)
    for function in (problem.torch_residual("weak"), *problem.functionals().values()):
        a, b = (function(torch.tensor(x[None])) for x in (over, clipped))
        assert torch.equal(a, b)
