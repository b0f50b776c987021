"""The pidm-fem pipeline end to end: meshes in other formats, run folders, a user's PDE, export."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pidm_fem.cli import main
from pidm_fem.mesh import unit_square_family
from pidm_fem.mesh.builtin import MESH_DIR
from pidm_fem.mesh.convert import convert_mesh
from pidm_fem.physics.problems import build_problem

HOLE_MESH = MESH_DIR / "beam_with_hole.msh"
EXAMPLE = MESH_DIR.parent / "examples" / "nonlinear_diffusion.py"
TINY = {"data": {"n_train": 6, "n_val": 2, "n_test": 3}, "model": {"kind": "mesh", "width": 8, "field_views": False},
        "diffusion": {"T": 10, "representation": "nodal"},
        "training": {"steps": 2, "batch_size": 3, "checkpoint_every": 2},
        "sampling": {"sampler": "ddim", "ddim_steps": 2}}


def _info_lines(capsys, path):
    assert main(["mesh", "info", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    return [out[0].split(": ", 1)[1], *out[1:]]  # without the file name


def test_mesh_info_is_the_same_for_msh_vtu_and_xdmf(tmp_path, capsys):
    reference = _info_lines(capsys, HOLE_MESH)
    assert any("boundary id" in line for line in reference)
    for suffix in (".vtu", ".xdmf", ".msh"):
        converted = tmp_path / f"beam{suffix}"
        assert main(["mesh", "convert", str(HOLE_MESH), str(converted)]) == 0
        capsys.readouterr()
        assert _info_lines(capsys, converted) == reference, suffix


def _run_file(tmp_path, problem, mesh, methods, **sections):
    run = {"run": {"problem": str(problem), "mesh": str(mesh), "methods": methods}, **TINY, **sections}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _pipeline(tmp_path, run_file, methods):
    """train, sample, evaluate and export through the command line; the run folder."""
    folder = tmp_path / "run"
    assert main(["train", str(run_file), "--out", str(folder)]) == 0
    assert main(["sample", str(folder), "--n", "3"]) == 0
    assert main(["evaluate", str(folder)]) == 0
    assert main(["export", str(folder), "--samples", methods[-1]]) == 0
    assert main(["export", str(folder), "--data", "test", "--format", "npz,xdmf"]) == 0
    for name in ["run.yaml", "report/results.json", "report/results.md", "report/samples.png",
                 *[f"samples/{m}.npz" for m in methods], *[f"export/{methods[-1]}/fields.{s}" for s in
                                                           ("pvd", "xdmf", "png", "npz")],
                 "export/data_test/fields.npz", "export/data_test/fields.xdmf"]:
        assert (folder / name).is_file(), name
    return folder


def test_the_pipeline_on_an_xdmf_mesh_of_a_domain_with_a_hole(tmp_path):
    mesh = convert_mesh(HOLE_MESH, tmp_path / "beam.xdmf")
    methods = ["ddpm", "pidm_mean"]
    folder = _pipeline(tmp_path, _run_file(tmp_path, "darcy", mesh, methods, data={**TINY["data"], "n_train": 6}),
                       methods)
    import json

    results = json.loads((folder / "report" / "results.json").read_text())
    assert set(methods) <= set(results["methods"])
    exported = np.load(folder / "export" / "data_test" / "fields.npz")
    assert exported["field_K"].shape[0] == 3 and exported["coordinates_K"].shape[1] == 2
    assert (exported["field_K"] > 0).all()


def test_a_users_pde_end_to_end_through_the_command_line(tmp_path):
    methods = ["ddpm", "pidm_mean", "ddpm_k_fem_p"]
    folder = _pipeline(tmp_path, _run_file(tmp_path, f"{EXAMPLE}:NonlinearDiffusion", unit_square_family()[0],
                                           methods), methods)
    import json

    results = json.loads((folder / "report" / "results.json").read_text())
    floor = results["data"]["residual"]["mean"]
    assert floor < 1e-10  # Newton's solution is the residual's zero
    assert results["methods"]["ddpm_k_fem_p"]["residual"]["mean"] < 1e-10  # u solved for DDPM's f
    assert results["methods"]["ddpm"]["residual"]["mean"] > 1e3 * floor


@pytest.fixture(scope="module")
def nonlinear():
    return build_problem(f"{EXAMPLE}:NonlinearDiffusion", str(unit_square_family()[0]), seed=0)


def test_a_form_problem_residual_vanishes_on_its_solves_and_passes_a_taylor_test(nonlinear):
    rows = np.stack([nonlinear.sample(i) for i in range(3)])
    residual = nonlinear.torch_residual("strong")
    r = residual(torch.from_numpy(rows))
    assert r.abs().max() < 1e-9
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rows + 0.05 * rng.normal(size=rows.shape)).requires_grad_()
    direction = torch.from_numpy(rng.normal(size=rows.shape))

    def J(t):
        return (residual(t) ** 2).sum()

    value = J(x)
    (gradient,) = torch.autograd.grad(value, x)
    with torch.no_grad():
        errors = [abs(J(x + h * direction) - value - h * (gradient * direction).sum()).item()
                  for h in (1e-3, 5e-4, 2.5e-4)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(rates > 1.9), (errors, rates)
    boundary = torch.from_numpy(nonlinear._constrained)
    assert torch.equal(r[:, boundary], torch.from_numpy(rows[:, boundary]))  # u - 0 at the Dirichlet nodes


def test_a_form_problem_builds_again_in_a_worker_and_refuses_unknown_options(nonlinear, tmp_path):
    assert np.array_equal(nonlinear.generator_factory()()(2), nonlinear.sample(2))
    code = main(["data", f"{EXAMPLE}:NonlinearDiffusion", "--mesh", str(unit_square_family()[0]), "--n", "2",
                 "--out", str(tmp_path / "x.h5"), "--option", "colour=3"])
    assert code == 2 and not any(tmp_path.iterdir())


def test_bad_run_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run: {{problem: darcy, mesh: {unit_square_family()[0]}}}\ntraining: {{lr: -1}}\n")
    failed = subprocess.run([sys.executable, "-m", "pidm_fem.cli", "train", str(bad), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "training.lr: must be > 0, got -1.0" in lines[0], failed.stderr
    assert not (tmp_path / "r").exists()  # nothing written for a run that fails its checks
    missing = tmp_path / "missing.yaml"
    missing.write_text("training: {steps: 2}\n")
    assert main(["train", str(missing)]) == 2
    assert main(["sample", str(tmp_path / "nowhere")]) == 2


def test_a_mesh_denoiser_samples_on_another_mesh_and_a_raster_model_is_refused(tmp_path, capsys):
    coarse, finer = unit_square_family()[:2]
    methods = ["ddpm", "ddpm_k_fem_p"]
    folder = tmp_path / "run"
    run_file = _run_file(tmp_path, "darcy", coarse, methods, diffusion={"T": 10})  # log K: K > 0 on any mesh
    assert main(["train", str(run_file), "--out", str(folder)]) == 0
    assert main(["sample", str(folder), "--n", "3", "--mesh", str(finer), "--option", "source=paper"]) == 0
    assert main(["evaluate", str(folder), "--mesh", str(finer), "--option", "source=paper"]) == 0
    there = folder / "meshes" / finer.stem
    finer_problem = build_problem("darcy", str(finer), seed=0, source="paper")
    saved = np.load(there / "samples" / "ddpm.npz")
    assert str(saved["fingerprint"]) == finer_problem.fingerprint
    assert saved["rows"].shape == (3, finer_problem.layout.total)
    import json

    results = json.loads((there / "report" / "results.json").read_text())
    assert results["run"]["mesh"] == str(finer)
    assert results["methods"]["ddpm_k_fem_p"]["residual"]["mean"] < 1e-8  # p solved on the finer mesh
    assert not (there / "runs").exists()  # nothing is trained there
    capsys.readouterr()
    assert main(["sample", str(folder), "--option", "source=paper"]) == 2  # options belong to another mesh
    raster = tmp_path / "raster"
    run_file = _run_file(tmp_path, "darcy", coarse, ["ddpm"], model={"kind": "unet", "width": 8, "field_views": False,
                                                                         "input_products": False})
    assert main(["train", str(run_file), "--out", str(raster)]) == 0
    capsys.readouterr()
    assert main(["sample", str(raster), "--n", "2", "--mesh", str(finer)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "mesh-bound model" in error[0], error
    assert not (raster / "meshes" / finer.stem / "samples").exists()
