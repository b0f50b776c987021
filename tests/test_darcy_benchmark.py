"""The main job (benchmarks/darcy_mesh.py) through the registry: smoke run, options, checks and processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pidm_fem.experiments.darcy_modes import ALL_METHODS, MODES
from pidm_fem.experiments.methods import METHODS, TRAJECTORY_DEFAULTS, method_config

ROOT = Path(__file__).resolve().parent.parent
TINY_MESH = ROOT / "meshes" / "unit_square_r0.msh"
#: a few steps of every method on the tiny mesh: the smoke run's settings
TINY = ["--set", "training.steps=3", "--set", "training.ema_start=1", "--set", "expert.steps=3",
        "--set", "sampling.n_samples=4", "--set", "cocogen.after=3"]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "darcy_mesh.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_smoke_run_of_every_first_class_method_writes_every_output(tmp_path):
    out = tmp_path / "bench"
    common = ["--quick", "--mesh", str(TINY_MESH), "--out", str(out), *TINY]
    # one method trained ahead, as a parallel process would; the full run resumes it instead of retraining
    proc = run_benchmark(*common, "--train-only", "--methods", "ddpm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "report").exists() and (out / "runs" / "ddpm" / "last.pt").is_file()
    trained = (out / "runs" / "ddpm" / "last.pt").stat().st_mtime_ns
    # every method of the registry: the full-range ones in two processes, then this process trains the
    # expert, samples and evaluates with two torch threads; CoCoGen corrects DDPM's and PIDM-mean's samples
    proc = run_benchmark(*common, "--jobs", "2", "--threads", "2", "--methods", *ALL_METHODS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "runs" / "ddpm" / "last.pt").stat().st_mtime_ns == trained
    report = out / "report"
    for name in ("results.json", "results.md", "samples.png", "residual_maps.png", "residual_histogram.png",
                 "training_curves.png"):
        assert (report / name).stat().st_size > 0, name
    rows = [*ALL_METHODS, "ddpm+cocogen", "pidm_mean+cocogen"]
    for row in rows:
        assert (report / "fields" / f"{row.replace('+', '_')}.pvd").is_file(), row
    results = json.loads((report / "results.json").read_text())
    assert list(results["methods"]) == rows
    assert (results["run"]["jobs"], results["run"]["torch_threads"]) == (2, 2)
    for row, entry in results["methods"].items():
        assert entry["residual"]["mean"] > 0 and entry["trivial_residual"]["mean"] > 0, row
        assert len(entry["state_error"]["per_sample"]) == 4, row
        split = entry["residual_by_region"]
        assert split["source"]["mean"] + split["elsewhere"]["mean"] == pytest.approx(entry["residual"]["mean"])
        fidelity = entry["fidelity"]
        assert fidelity["energy_distance"] >= 0 and fidelity["sliced_wasserstein"] >= 0, row
        for field in ("p", "K"):
            assert {"within_std", "reference_std", "within_std_ratio"} <= set(fidelity["fields"][field]), row
        assert entry["cost"]["train_seconds_per_step"] > 0 and entry["cost"]["sample_seconds_per_sample"] > 0, row
    assert results["data"]["residual"]["mean"] < 1e-8  # the data solve the discrete problem exactly
    assert results["data"]["state_error"]["mean"] < 1e-10 and results["trivial"]["state_error"]["mean"] == 1.0
    # the physics-exact reference: DDPM's K with its FEM pressure sits on the data's residual floor
    exact = results["methods"]["ddpm_k_fem_p"]
    assert exact["residual"]["mean"] < 1e-8 and exact["state_error"]["mean"] < 1e-10
    assert exact["fidelity"]["fields"]["K"] == results["methods"]["ddpm"]["fidelity"]["fields"]["K"]
    assert results["methods"]["ddpm"]["residual"]["mean"] > 1e3 * exact["residual"]["mean"]
    table = (report / "results.md").read_text()
    assert all(f"| {row} |" in table for row in rows)


def test_the_expert_trains_beside_frozen_copies_of_the_models_it_needs(tmp_path):
    from pidm_fem.training import load_checkpoint

    proc = run_benchmark("--quick", "--mesh", str(TINY_MESH), "--out", str(tmp_path), *TINY, "--train-only",
                         "--jobs", "1", "--methods", "ddpm", "pidm_trajectory", "ddpm_k_pidm_p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    full = load_checkpoint(runs / "pidm_trajectory" / "last.pt").ema["shadow"]
    ddpm = load_checkpoint(runs / "ddpm" / "last.pt").ema["shadow"]
    expert = load_checkpoint(runs / "ddpm_k_pidm_p" / "last.pt")
    for prefix, source in (("base.high.", full), ("other.", ddpm)):
        frozen = {key[len(prefix):]: value for key, value in expert.ema["shadow"].items() if key.startswith(prefix)}
        assert frozen.keys() == source.keys() and all(torch.equal(frozen[key], source[key]) for key in source)
    low = [key for key in expert.ema["shadow"] if key.startswith("base.low.")]
    assert low and not any(torch.equal(expert.ema["shadow"][key], full[key[len("base.low."):]])
                           for key in low if key[len("base.low."):] in full and "weight" in key)
    diffusion = expert.config["diffusion"]
    assert diffusion["role"] == "expert_on_frozen_coefficient" and diffusion["trajectory_steps"] == 50
    assert expert.config["expert"]["width"] == 32 and expert.config["training"]["lr"] == 4e-3


def test_defaults_are_the_projects_choices_and_the_paper_preset_the_references():
    from pidm_fem.training import config_from_dict

    project = config_from_dict({})
    assert (project.diffusion.representation, project.diffusion.prediction, project.diffusion.residual_gradient) == (
        "elliptic", "v", "state")
    assert project.model.kind == "mesh" and project.model.field_views and project.model.gradient_views
    assert project.model.input_products and project.sampling.sampler == "ddim"
    assert (project.expert.below, project.expert.width, project.expert.lr, project.expert.steps) == (10, 32, 4e-3, 4500)
    paper = config_from_dict({"preset": "paper"})
    assert (paper.diffusion.representation, paper.diffusion.prediction, paper.diffusion.residual_gradient) == (
        "nodal", "x0", "all")
    assert not (paper.model.field_views or paper.model.gradient_views or paper.model.input_products)
    # a run file's own keys win over the preset's
    assert config_from_dict({"preset": "paper", "diffusion": {"prediction": "v"}}).diffusion.prediction == "v"


def test_each_method_configures_its_run_from_the_registry():
    sections = MODES["default"]["config"]
    for name in ALL_METHODS:
        config = method_config(sections, name)
        assert config.diffusion.method == METHODS[name].diffusion.get("method", "pidm"), name
    trajectory = method_config(sections, "pidm_trajectory").diffusion
    assert {key: getattr(trajectory, key) for key in TRAJECTORY_DEFAULTS} == TRAJECTORY_DEFAULTS
    # the run file wins over a method's defaults, not over the keys that define it
    chosen = {**sections, "diffusion": {"trajectory_steps": 20, "method": "ddpm"}}
    assert method_config(chosen, "pidm_trajectory").diffusion.trajectory_steps == 20
    assert method_config(chosen, "pidm_trajectory").diffusion.method == "pidm"
    # the expert's optimiser and trajectory chains; the full-range runs keep the training section's
    expert = method_config(sections, "ddpm_k_pidm_p")
    assert (expert.training.steps, expert.training.lr, expert.training.ema_start) == (300, 4e-3, 150)
    assert expert.diffusion.trajectory_steps == 50 and expert.diffusion.role == "expert_on_frozen_coefficient"
    assert method_config(sections, "pidm_trajectory").training.lr == 1e-3


def test_every_mode_configures_every_method_and_its_denoiser(tmp_path):
    from pidm_fem.experiments import Experiment
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.models import count_parameters
    from pidm_fem.physics.darcy_flow import DarcyFlow

    problem = DarcyFlow.from_options(MESH_DIR / "unit_square_r0.msh")
    for mode, settings in MODES.items():
        for name in settings["methods"]:
            config = method_config(settings["config"], name)
            experiment = Experiment(problem, config, data_dir=tmp_path, run_dir=tmp_path / name, progress=False)
            parts = experiment.build_denoiser()
            assert count_parameters(parts) > 0, (mode, name)


def test_set_and_config_override_the_mode_and_bad_input_is_one_line(tmp_path):
    from pidm_fem.experiments.benchmark import BenchmarkError, prepare

    run_file = tmp_path / "run.yaml"
    run_file.write_text("training: {steps: 7}\nmodel: {width: 8}\n")
    plan = prepare("darcy", "quick", mesh=TINY_MESH, out=tmp_path / "o", config=run_file,
                   overrides=["training.steps=5", "cocogen.apply_to=[ddpm]", "sampling.n_samples=3"])
    config = method_config(plan.study.sections, "pidm_mean")
    assert (config.training.steps, config.model.width, plan.cocogen, plan.n_samples) == (5, 8, ("ddpm",), 3)
    assert config.data.n_train == MODES["quick"]["config"]["data"]["n_train"]
    bad = {
        ("training.lr=-1",): f"{run_file}: training.lr: must be > 0, got -1.0",
        ("trainig.steps=1",): f"{run_file}: trainig: unknown section (did you mean training?)",
        ("steps=1",): "--set 'steps=1': expected SECTION.KEY=VALUE",
        ("cocogen.apply_to=[ddpm_k_fem_p]",): "cocogen.apply_to: ddpm_k_fem_p samples another method's model; "
                                              "correct that method",
        ("cocogen.apply_to=[pidm_trajectory]",): "cocogen.apply_to: pidm_trajectory is not among the methods run",
        ("diffusion.representation=nodal",): f"{run_file}: model.field_views: no field is linearly mapped; "
                                             "it needs diffusion.representation: elliptic",
    }
    for overrides, message in bad.items():
        with pytest.raises(BenchmarkError) as caught:
            prepare("darcy", "quick", mesh=TINY_MESH, out=tmp_path / "o", config=run_file, overrides=overrides)
        assert str(caught.value) == message
    with pytest.raises(BenchmarkError, match="ddpm_k_pidm_p uses the pidm_trajectory and ddpm models"):
        prepare("darcy", "quick", mesh=TINY_MESH, out=tmp_path / "o", methods=["ddpm_k_pidm_p"])
    assert not (tmp_path / "o").exists()


def test_balanced_groups_split_the_full_range_methods_by_cost():
    from pidm_fem.experiments.comparison import balanced_groups

    methods = ["ddpm", "pidm_mean", "pidm_sample", "physics_guided", "ddpm_k_fem_p"]
    assert balanced_groups(methods, 1) == [["ddpm", "pidm_mean", "pidm_sample", "physics_guided"]]
    assert balanced_groups(methods, 2) == [["ddpm", "pidm_sample"], ["pidm_mean", "physics_guided"]]
    assert sorted(map(len, balanced_groups(methods, 8))) == [1, 1, 1, 1]  # no empty group, sampled-only left out
    assert balanced_groups(["ddpm", "pidm_trajectory", "ddpm_k_pidm_p"], 2) == [["pidm_trajectory"], ["ddpm"]]
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        balanced_groups(methods, 0)


@pytest.mark.parametrize("option", ["--jobs", "--threads"])
def test_bad_jobs_or_threads_is_a_one_line_error(tmp_path, option):
    proc = run_benchmark("--quick", option, "0", "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"darcy_mesh: error: {option} must be at least 1, got 0"
    assert not (tmp_path / "bench").exists()


def _children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    return {int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()}


def test_sigterm_stops_the_training_processes(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "darcy_mesh.py"), "--quick", "--mesh",
                             str(TINY_MESH), "--set", "training.steps=100000", "--jobs", "2", "--train-only",
                             "--out", str(tmp_path / "bench")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        # the first method of each of the two groups
        while not all((tmp_path / "bench" / "runs" / m / "log.jsonl").exists() for m in ("ddpm", "pidm_mean")):
            assert proc.poll() is None and time.monotonic() < deadline, "the training processes did not start"
            time.sleep(1)
        workers = _children(proc.pid)
        assert len(workers) >= 2
        proc.terminate()
        assert proc.wait(timeout=60) != 0
        deadline = time.monotonic() + 30
        while [pid for pid in workers if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        assert not alive, "training processes outlived the benchmark"
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_composed_models_must_share_their_normalised_units():
    from pidm_fem.diffusion import FieldNormalizer
    from pidm_fem.experiments.comparison import require_same_units

    data = torch.randn(6, 2, 5, dtype=torch.float64)
    require_same_units(FieldNormalizer.fit(data), FieldNormalizer.fit(data.clone()), "composed")
    with pytest.raises(ValueError, match="composed: the models it composes were trained in different normalised"):
        require_same_units(FieldNormalizer.fit(data), FieldNormalizer.fit(2.0 * data), "composed")
