"""SIMP against the 88-line code's published MBB results; filters; the command line's bad input."""

import json

import firedrake as fd
import meshio
import numpy as np
import pytest

from pidm_fem.cli import main
from pidm_fem.mesh.builtin import MESH_DIR
from pidm_fem.physics.elasticity import Elasticity
from pidm_fem.topopt import SIMPSettings, build_filter, mbb_beam, optimise
from pidm_fem.topopt.filters import DensityFilter
from pidm_fem.topopt.mbb import mbb_conditions

#: the 88-line code's compliances of the 60 x 20 MBB half-beam (volfrac 0.5, penal 3, rmin 2.4)
PUBLISHED = {"density": 233.71, "sensitivity": 216.81}


@pytest.mark.parametrize("filter_kind", ["density", "sensitivity"])
def test_mbb_beam_meets_the_88_line_codes_compliance(filter_kind):
    problem = mbb_beam(60, 20, quadrilateral=True)
    result = optimise(problem, SIMPSettings(filter=filter_kind), progress=False)
    assert result.converged and result.iterations < 500
    assert abs(result.compliance / PUBLISHED[filter_kind] - 1) < 0.005, result.compliance
    assert abs(result.volume_fraction - 0.5) < 1e-3


def test_mma_reaches_the_optimality_criteria_design():
    result = optimise(mbb_beam(60, 20, quadrilateral=True), SIMPSettings(optimizer="mma"), progress=False)
    assert result.converged and abs(result.compliance / PUBLISHED["density"] - 1) < 0.01
    assert abs(result.volume_fraction - 0.5) < 1e-3


def test_compliance_of_the_filtered_design_passes_a_taylor_test():
    problem = mbb_beam(12, 4, quadrilateral=False)
    rng = np.random.default_rng(2)
    x = rng.uniform(0.3, 0.8, problem.D.dof_count)
    d = rng.uniform(-1, 1, problem.D.dof_count)
    for kind in ("density", "helmholtz"):
        filt = build_filter(kind, problem.D, 1.5)

        def c(y):
            problem.solve(filt.apply(y))
            return problem.compliance()

        c0 = c(x)
        slope = filt.adjoint(problem.compliance_gradient(), x) @ d
        errors = [abs(c(x + h * d) - c0 - h * slope) for h in (1e-2, 5e-3, 2.5e-3)]
        assert all(np.log2(errors[i] / errors[i + 1]) > 1.9 for i in range(2)), (kind, errors)


def test_filters_keep_constants_and_their_adjoints_are_transposes():
    problem = mbb_beam(10, 5, quadrilateral=False)
    rng = np.random.default_rng(3)
    x, g = rng.uniform(size=problem.D.dof_count), rng.uniform(size=problem.D.dof_count)
    for kind in ("density", "helmholtz"):
        filt = build_filter(kind, problem.D, 2.0)
        assert np.allclose(filt.apply(np.ones_like(x)), 1.0)
        assert abs(filt.apply(x) @ g - x @ filt.adjoint(g, x)) < 1e-12 * abs(x @ g)


def test_a_p1_design_with_the_helmholtz_filter():
    problem = Elasticity(fd.RectangleMesh(30, 10, 30.0, 10.0), *mbb_conditions(30, 10), density="P1")
    filt = build_filter("helmholtz", problem.D, 1.5)
    x, g = np.random.default_rng(4).uniform(size=(2, problem.D.dof_count))
    assert np.allclose(filt.apply(np.ones_like(x)), 1.0)
    assert abs(filt.apply(x) @ g - x @ filt.adjoint(g, x)) < 1e-12 * abs(x @ g)
    result = optimise(problem, SIMPSettings(filter="helmholtz", rmin=1.5), progress=False)
    assert result.converged and abs(result.volume_fraction - 0.5) < 1e-3


def test_density_filter_on_a_grid_is_the_88_line_codes():
    """Cone weights on a 3 x 3 grid of unit cells with rmin 1.5: the centre's neighbours by hand."""
    centres = np.array([[i + 0.5, j + 0.5] for i in range(3) for j in range(3)], dtype=float)
    filt = DensityFilter(centres, np.ones(9), 1.5)
    weights = np.array([max(0, 1.5 - np.hypot(i - 1, j - 1)) for i in range(3) for j in range(3)])
    assert np.allclose(filt.matrix[4].toarray().ravel(), weights / weights.sum())


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_simp_mbb_command_writes_every_output(tmp_path):
    out = tmp_path / "mbb"
    assert main(["simp", "mbb", "--nelx", "12", "--nely", "4", "--quadrilateral", "--out", str(out),
                 "--max-iterations", "5"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"compliance", "volume_fraction", "iterations", "seconds", "settings"} <= set(results)
    assert results["iterations"] == 5 and results["settings"]["filter"] == "density"
    assert len(json.loads((out / "history.json").read_text())) == 5
    assert (out / "design.png").stat().st_size > 0 and (out / "fields" / "design.pvd").is_file()


BEAM = """
supports:
  - {kind: roller_x, boundary: 1}
  - {kind: roller_y, point: [60, 0]}
loads:
  - {point: [0, 20], force: [0, -1]}
simp: {max_iterations: 3}
"""


@pytest.mark.parametrize("change, words", [
    (("boundary: 1", "boundary: 8"), "no boundary id 8"),
    (("point: [0, 20]", "point: [0, 25]"), "off the domain"),
    (("simp: {max_iterations: 3}", "simp: {volfrac: 1.5}"), "volfrac must lie in (0, 1)"),
    (("simp: {max_iterations: 3}", "simp: {volume: 0.4}"), "unknown keys ['volume']"),
    (("kind: roller_x", "kind: hinge"), "support kind must be one of"),
    (("loads:", "load:"), "unknown sections"),
])
def test_bad_problem_files_are_one_line_errors_and_leave_nothing(tmp_path, capsys, change, words):
    problem = tmp_path / "beam.yaml"
    problem.write_text(BEAM.replace(*change))
    out = tmp_path / "out"
    mesh = MESH_DIR / "mbb_beam_60x20.msh"
    assert main(["simp", "--mesh", str(mesh), "--problem", str(problem), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(problem) in err[0] and words in err[0], err
    assert not out.exists() and _files(tmp_path) == [problem.relative_to(tmp_path)]


def test_a_mesh_that_is_not_2d_and_a_bad_volfrac_are_refused(tmp_path, capsys):
    cube = tmp_path / "cube.vtu"
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    meshio.write(cube, meshio.Mesh(points, [("tetra", np.array([[0, 1, 2, 3]]))]))
    problem = tmp_path / "beam.yaml"
    problem.write_text(BEAM)
    out = tmp_path / "out"
    assert main(["simp", "--mesh", str(cube), "--problem", str(problem), "--out", str(out)]) == 2
    assert "3D cells" in capsys.readouterr().err
    assert main(["simp", "mbb", "--volfrac", "0", "--out", str(out)]) == 2
    assert "volfrac must lie in (0, 1)" in capsys.readouterr().err
    assert not out.exists()
