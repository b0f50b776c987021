"""Smoke run of the main job (benchmarks/darcy_mesh.py): every output, every metric, every method."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from darcy_mesh import METHODS  # noqa: E402  (the benchmarks folder is not a package)


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "darcy_mesh.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "bench"
    common = ["--quick", "--mesh", str(ROOT / "meshes" / "unit_square_r0.msh"), "--steps", "3", "--out", str(out)]
    # one method trained ahead, as a parallel process would; the full run resumes it instead of retraining
    proc = run_benchmark(*common, "--train-only", "--methods", "ddpm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "report").exists() and (out / "runs" / "ddpm" / "last.pt").is_file()
    trained = (out / "runs" / "ddpm" / "last.pt").stat().st_mtime_ns
    # every method (--quick alone leaves the trajectory ones out); the others in two processes, then this
    # process samples and evaluates with two torch threads
    proc = run_benchmark(*common, "--n-samples", "4", "--jobs", "2", "--threads", "2", "--methods", *METHODS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "runs" / "ddpm" / "last.pt").stat().st_mtime_ns == trained
    report = out / "report"
    for name in ("results.json", "results.md", "samples.png", "residual_maps.png", "residual_histogram.png",
                 "training_curves.png"):
        assert (report / name).stat().st_size > 0, name
    for method in METHODS:
        assert (report / "fields" / f"{method}.pvd").is_file(), method
    results = json.loads((report / "results.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    assert (results["run"]["jobs"], results["run"]["torch_threads"]) == (2, 2)
    for method, entry in results["methods"].items():
        assert entry["residual"]["mean"] > 0 and entry["residual"]["median"] > 0, method
        assert entry["trivial_residual"]["mean"] > 0, method
        assert entry["state_error"]["mean"] > 0 and len(entry["state_error"]["per_sample"]) == 4, method
        split = entry["residual_by_region"]
        assert split["source"]["mean"] + split["elsewhere"]["mean"] == pytest.approx(entry["residual"]["mean"])
        fidelity = entry["fidelity"]
        assert fidelity["energy_distance"] >= 0 and fidelity["sliced_wasserstein"] >= 0, method
        for field in ("p", "K"):
            stats = fidelity["fields"][field]
            assert {"mean", "std", "within_std", "reference_std", "within_std_ratio"} <= set(stats), (method, field)
        assert entry["cost"]["train_seconds_per_step"] > 0 and entry["cost"]["sample_seconds_per_sample"] > 0
        assert entry["ratios"]["residual_to_baseline"] is not None, method
    assert results["data"]["residual"]["mean"] < 1e-8  # the data solve the discrete problem exactly
    assert results["data"]["state_error"]["mean"] < 1e-10 and results["trivial"]["state_error"]["mean"] == 1.0
    table = (report / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS)

    # the trajectory of the same samples (seed 1, 4 of them) ends on the samples the benchmark scored
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling_trajectory.py"), *common[:3],
                           "--out", str(out), "--n-samples", "4", "--every", "20"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "trajectory" / "trajectory.png").stat().st_size > 0
    traced = json.loads((out / "trajectory" / "trajectory.json").read_text())
    assert set(traced["methods"]) == {"ddpm", "pidm_mean", "pidm_sample", "pidm_trajectory", "ddpm_expert",
                                      "pidm_trajectory_expert", "pidm_trajectory_expert_on_ddpm_k",
                                      "pidm_trajectory_expert_on_ddpm_k_high", "pidm_trajectory_expert_given_ddpm_k"}
    for method, curves in traced["methods"].items():
        times = list(curves["sampling_estimate"])
        assert times == list(curves["noised_data_estimate"]) == list(curves["noised_data"]) and len(times) >= 3
        last = curves["sampling_estimate"][times[-1]]
        assert last["residual"] == pytest.approx(results["methods"][method]["residual"]["mean"], rel=1e-9)
        assert last["state_error"] == pytest.approx(results["methods"][method]["state_error"]["mean"], rel=1e-9)
        noised = curves["noised_data"]
        assert noised[times[0]]["residual"] > noised[times[-1]]["residual"] > 0  # noise raises the residual
    assert traced["trivial"]["state_error"] == pytest.approx(1.0)


def test_sampling_trajectory_without_runs_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling_trajectory.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sampling_trajectory: error: {tmp_path / 'runs'}: no trained run of ddpm, pidm_mean, pidm_sample, "
        "pidm_trajectory, ddpm_expert, pidm_trajectory_expert, pidm_trajectory_expert_on_ddpm_k, "
        "pidm_trajectory_expert_on_ddpm_k_high, pidm_trajectory_expert_given_ddpm_k"]


def test_sampling_trajectory_traces_every_trained_method_without_condition_channels():
    # its list stays literal (importing darcy_methods loads Firedrake before PETSC_OPTIONS is set)
    from darcy_methods import TRAINED
    from sampling_trajectory import UNCONDITIONED

    assert UNCONDITIONED == tuple(m for m, switches in TRAINED.items() if switches["method"] != "physics_guided")


def test_every_override_option_reaches_its_configuration_key():
    from darcy_mesh import OVERRIDES, base_config, parse_args

    values = {"width": "24", "field_views": None, "gradient_views": None, "input_products": None,
              "output_modes": "7", "lr_schedule": "cosine", "c_residual": "0.5", "representation": "nodal",
              "prediction": "x0",
              "physics_t_fraction": "0.25", "residual": "weak", "residual_gradient": "all", "sample_steps": "3",
              "min_snr_gamma": "50", "c_state": "2", "state_on": "trajectory", "trajectory_every": "5",
              "trajectory_steps": "4", "trajectory_t_fraction": "0.3", "trajectory_eta": "0.5",
              "sampler": "ddpm", "ddim_steps": "20", "eta": "0.5"}
    assert set(values) == set(OVERRIDES)
    argv = ["--quick"]
    for option, value in values.items():
        argv += [f"--{option.replace('_', '-')}"] + ([] if value is None else [value])
    config = base_config(parse_args(argv))
    for option, (section, key) in OVERRIDES.items():
        expected = True if values[option] is None else type(config[section][key])(values[option])
        assert config[section][key] == expected, option
    assert config != base_config(parse_args(["--quick"]))


def test_trajectory_method_fills_its_defaults_and_the_options_win():
    from darcy_mesh import base_config, parse_args
    from darcy_methods import TRAJECTORY_DEFAULTS, method_config

    trajectory = method_config(base_config(parse_args([])), "pidm_trajectory").diffusion
    assert (trajectory.method, trajectory.x0_estimation) == ("pidm", "mean")
    assert {key: getattr(trajectory, key) for key in TRAJECTORY_DEFAULTS} == TRAJECTORY_DEFAULTS
    assert method_config(base_config(parse_args([])), "pidm_mean").diffusion.trajectory_every == 0
    explicit = method_config(base_config(parse_args(["--trajectory-every", "7", "--c-state", "0"])), "pidm_trajectory")
    assert (explicit.diffusion.trajectory_every, explicit.diffusion.c_state) == (7, 0.0)
    assert explicit.diffusion.trajectory_steps == TRAJECTORY_DEFAULTS["trajectory_steps"]


def test_each_expert_trains_its_models_loss_below_the_split_with_the_samplers_chains():
    from darcy_mesh import base_config, parse_args
    from darcy_methods import EXPERT_BELOW, EXPERT_OF, method_config

    for mode, chain in (("default", 50), ("full", 100)):  # DDIM's 50 steps, or DDPM's T = 100
        base = base_config(parse_args([] if mode == "default" else [f"--{mode}"]))
        for expert, run in EXPERT_OF.items():
            ours, theirs = method_config(base, expert).diffusion, method_config(base, run).diffusion
            assert ours.expert_below == EXPERT_BELOW and theirs.expert_below == 0
            assert (ours.method, ours.x0_estimation, ours.c_state) == (theirs.method, theirs.x0_estimation,
                                                                       theirs.c_state)
        trajectory = method_config(base, "pidm_trajectory_expert").diffusion
        assert trajectory.trajectory_every > 0 and trajectory.trajectory_steps == chain
    explicit = method_config(base_config(parse_args(["--trajectory-steps", "7"])), "pidm_trajectory_expert")
    assert explicit.diffusion.trajectory_steps == 7
    shorter = base_config(parse_args(["--steps", "800", "--expert-steps", "300"]))
    assert [method_config(shorter, m).training.steps for m in ("ddpm", "ddpm_expert", "pidm_trajectory_expert")] == [
        800, 300, 300]
    assert method_config(shorter, "ddpm_expert").training.ema_start == 150
    cosine_experts = base_config(parse_args(["--expert-lr-schedule", "cosine"]))
    assert [method_config(cosine_experts, m).training.lr_schedule for m in ("ddpm", "pidm_trajectory_expert")] == [
        "constant", "cosine"]
    faster_experts = base_config(parse_args(["--expert-lr", "3e-3"]))
    assert [method_config(faster_experts, m).training.lr for m in ("ddpm", "pidm_trajectory_expert")] == [1e-3, 3e-3]
    warm = base_config(parse_args(["--expert-start", "full_range"]))
    assert [method_config(warm, m).diffusion.expert_start for m in ("pidm_trajectory", "pidm_trajectory_expert")] == [
        "scratch", "full_range"]
    wide = base_config(parse_args(["--expert-width", "32"]))
    assert [method_config(wide, m).model.expert_width for m in ("pidm_trajectory", "pidm_trajectory_expert")] == [
        0, 32]
    assert method_config(wide, "pidm_trajectory_expert").model.width == method_config(wide, "pidm_trajectory").model.width
    cosine = base_config(parse_args(["--lr-schedule", "cosine", "--expert-lr-schedule", "constant"]))
    assert [method_config(cosine, m).training.lr_schedule for m in ("ddpm", "pidm_trajectory_expert")] == [
        "cosine", "constant"]


def test_an_expert_without_its_model_is_a_one_line_error(tmp_path):
    proc = run_benchmark("--quick", "--methods", "pidm_trajectory_expert", "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "darcy_mesh: error: --methods: pidm_trajectory_expert samples the pidm_trajectory model, "
        "so it needs pidm_trajectory")
    assert not (tmp_path / "bench").exists()
    proc = run_benchmark("--quick", "--methods", "pidm_trajectory", "pidm_trajectory_expert_ddpm_k",
                         "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "darcy_mesh: error: --methods: pidm_trajectory_expert_ddpm_k samples the pidm_trajectory_expert and ddpm "
        "models, so it needs pidm_trajectory_expert and ddpm")
    assert not (tmp_path / "bench").exists()
    proc = run_benchmark("--quick", "--methods", "pidm_trajectory", "pidm_trajectory_expert_on_ddpm_k",
                         "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "darcy_mesh: error: --methods: pidm_trajectory_expert_on_ddpm_k samples the ddpm model, so it needs ddpm")
    assert not (tmp_path / "bench").exists()


def test_an_expert_on_another_models_coefficient_freezes_it_and_trains_after_the_parallel_runs(tmp_path):
    from darcy_mesh import base_config, parse_args
    from darcy_methods import COEFFICIENT_OF, TRAINED, method_config, needed_methods, train_in_parallel

    base = base_config(parse_args([]))
    assert {m for m in TRAINED if method_config(base, m).diffusion.frozen_coefficient} == set(COEFFICIENT_OF)
    theirs = method_config(base, "pidm_trajectory_expert").diffusion
    for steps, suffix in (("all", ""), ("high", "_high")):
        ours = method_config(base, f"pidm_trajectory_expert_on_ddpm_k{suffix}").diffusion
        assert ours == dataclasses.replace(theirs, frozen_coefficient=True, frozen_coefficient_steps=steps)
        assert needed_methods(f"pidm_trajectory_expert_on_ddpm_k{suffix}") == ("pidm_trajectory", "ddpm")
    given = method_config(base, "pidm_trajectory_expert_given_ddpm_k").diffusion
    assert given == dataclasses.replace(theirs, frozen_coefficient=True, coefficient_input="estimate")
    assert needed_methods("pidm_trajectory_expert_given_ddpm_k") == ("pidm_trajectory", "ddpm")
    # left to the sequential train_all, which runs after every other method has finished: no process is started
    train_in_parallel(base, ["ddpm", *COEFFICIENT_OF], ROOT / "meshes" / "unit_square_r0.msh", tmp_path, 1, 2, False)
    assert not any(tmp_path.iterdir())


def test_composed_models_must_share_their_normalised_units():
    from darcy_methods import require_same_units

    from pidm_fem.diffusion import FieldNormalizer

    data = torch.randn(6, 2, 5, dtype=torch.float64)
    require_same_units(FieldNormalizer.fit(data), FieldNormalizer.fit(data.clone()), "composed")
    with pytest.raises(ValueError, match="composed: the models it composes were trained in different normalised"):
        require_same_units(FieldNormalizer.fit(data), FieldNormalizer.fit(2.0 * data), "composed")


def test_every_mode_configures_every_trained_method_and_its_denoiser(tmp_path):
    """The modes' settings are valid run configurations, --full (the GPU mode, never run here) included."""
    from darcy_mesh import MODES, base_config, parse_args
    from darcy_methods import TRAINED, method_config

    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.models import count_parameters

    for mode in MODES:
        args = parse_args([] if mode == "default" else [f"--{mode}"])
        assert args.mode == mode
        configs = {method: method_config(base_config(args), method) for method in TRAINED}
        assert configs["ddpm"].training.steps == MODES[mode]["config"]["training"]["steps"]
        experiment = DarcyExperiment(configs["pidm_mean"], MESH_DIR / MODES[mode]["mesh"], data_dir=tmp_path,
                                     run_dir=tmp_path / mode, progress=False)
        assert count_parameters(experiment.build_model()) > 0  # no data needed: the normaliser is not fitted
    assert parse_args(["--full", "--device", "cuda"]).device == "cuda"


def test_quick_mode_leaves_the_trajectory_methods_out_unless_asked():
    from darcy_mesh import METHODS, QUICK_METHODS, parse_args, selected_methods

    assert selected_methods(parse_args([])) == list(METHODS)
    assert selected_methods(parse_args(["--quick"])) == list(QUICK_METHODS)
    assert not any(m.startswith("pidm_trajectory") or m.endswith("_expert") for m in QUICK_METHODS)
    assert set(QUICK_METHODS) < set(METHODS)
    asked = ["ddpm", "pidm_trajectory"]
    assert selected_methods(parse_args(["--quick", "--methods", *asked])) == asked
    assert "pidm_sample" not in selected_methods(parse_args(["--no-sample-estimation"]))


def test_balanced_groups_split_the_trained_methods_by_cost():
    from darcy_methods import balanced_groups

    methods = ["ddpm", "pidm_mean", "pidm_sample", "physics_guided", "cocogen"]
    assert balanced_groups(methods, 1) == [["pidm_sample", "pidm_mean", "physics_guided", "ddpm"]]
    assert balanced_groups(methods, 2) == [["pidm_sample", "ddpm"], ["pidm_mean", "physics_guided"]]
    assert sorted(map(len, balanced_groups(methods, 8))) == [1, 1, 1, 1]  # no empty group, sampled-only left out
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        balanced_groups(methods, 0)
    # an expert trains after its model, in its model's process; alone when its model is not asked for
    experts = ["ddpm", "pidm_trajectory_expert", "pidm_trajectory", "ddpm_expert", "pidm_mean"]
    assert balanced_groups(experts, 2) == [["pidm_trajectory", "pidm_trajectory_expert"],
                                           ["ddpm", "ddpm_expert", "pidm_mean"]]
    assert balanced_groups(["ddpm_expert", "pidm_mean"], 2) == [["pidm_mean"], ["ddpm_expert"]]
    # the experts on another model's coefficient train after every group
    on_ddpm_k = ["pidm_trajectory_expert_on_ddpm_k", "pidm_trajectory_expert_on_ddpm_k_high"]
    assert balanced_groups(["ddpm", "pidm_trajectory", *on_ddpm_k], 2) == [["pidm_trajectory"], ["ddpm"]]


@pytest.mark.parametrize("option", ["--jobs", "--threads"])
def test_bad_jobs_or_threads_is_a_one_line_error(tmp_path, option):
    proc = run_benchmark("--quick", option, "0", "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"darcy_mesh: error: {option} must be at least 1, got 0"
    assert not (tmp_path / "bench").exists()


def _children(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task")
    return {int(child) for task in tasks.iterdir() for child in (task / "children").read_text().split()}


def test_sigterm_stops_the_training_processes(tmp_path):
    mesh = ROOT / "meshes" / "unit_square_r0.msh"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "darcy_mesh.py"), "--quick", "--mesh", str(mesh),
                             "--steps", "100000", "--jobs", "2", "--train-only", "--out", str(tmp_path / "bench")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        # the first method of each of the two groups
        while not all((tmp_path / "bench" / "runs" / m / "log.jsonl").exists() for m in ("pidm_sample", "pidm_mean")):
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


def test_residual_norms_strong_rewards_collapse_and_preconditioned_does_not(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "residual_norms.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    norms = json.loads((tmp_path / "residual_norms.json").read_text())["mean_squared_residual"]
    for kind in ("strong", "preconditioned"):
        assert norms[kind]["data"] < 1e-20 * norms[kind]["p=0"], kind  # the data solve the discrete problem
    assert norms["strong"]["reward_for_collapse"] > 10  # a wrong pressure costs more than no pressure
    assert 0.5 < norms["preconditioned"]["reward_for_collapse"] < 2


def test_sampling_trajectory_reports_the_floor_of_a_subspace_model(tmp_path):
    common = ["--quick", "--mesh", str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path)]
    proc = run_benchmark(*common, "--steps", "2", "--methods", "ddpm", "--output-modes", "8", "--train-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling_trajectory.py"), *common,
                           "--n-samples", "4", "--every", "40"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ddpm: the test data projected on its output subspace: mean |r|" in proc.stdout
    floor = json.loads((tmp_path / "trajectory" / "trajectory.json").read_text())["methods"]["ddpm"]["subspace_floor"]
    # 8 of the 256 training fields' directions do not hold the test fields: neither exact nor p = 0
    assert 1e-6 < floor["residual"] and 1e-3 < floor["state_error"] < 1


def test_subspace_floor_is_exact_with_every_direction_and_refuses_too_many(tmp_path):
    common = [sys.executable, str(ROOT / "benchmarks" / "subspace_floor.py"), "--quick",
              "--mesh", str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path)]
    proc = subprocess.run([*common, "--modes", "1000000"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "subspace_floor: error: --modes must lie in [1, ")
    n_nodes = int(proc.stderr.strip().splitlines()[-1].split(", ")[1].split("]")[0])
    proc = subprocess.run([*common, "--modes", "4", str(n_nodes)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "subspace_floor" / "subspace_floor.png").stat().st_size > 0
    summary = json.loads((tmp_path / "subspace_floor" / "subspace_floor.json").read_text())
    for basis in ("principal_components", "laplacian_modes"):
        few, every = summary[basis]["4"], summary[basis][str(n_nodes)]
        assert every["residual"] < 1e-9 and every["state_error"] < 1e-9, basis  # the data themselves
        assert few["residual"] > 0.1 * summary["trivial"]["residual"], basis


def test_surrogate_solver_trains_each_weight_and_scores_it_against_the_trivial_field(tmp_path):
    common = [sys.executable, str(ROOT / "benchmarks" / "surrogate_solver.py"), "--quick",
              "--mesh", str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path), "--steps", "3"]
    proc = subprocess.run([*common, "--c-residual", "0", "1e-3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "surrogate_solver" / "report"
    assert (report / "surrogate_solver.png").stat().st_size > 0
    summary = json.loads((report / "surrogate_solver.json").read_text())
    assert set(summary["solvers"]) == {"c_residual_0", "c_residual_0.001"}
    for entry in summary["solvers"].values():
        assert entry["residual"] > 0 and entry["state_error"] > 0 and entry["seconds_per_step"] > 0
    assert summary["trivial"]["state_error"] == pytest.approx(1.0)
    for name in summary["solvers"]:
        assert (tmp_path / "surrogate_solver" / "runs" / name / "last.pt").is_file()
    proc = subprocess.run([*common, "--c-residual", "-1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "surrogate_solver: error: --c-residual" in proc.stderr


def test_pressure_solver_hides_the_pressure_and_an_exact_output_scores_the_data_floor(tmp_path):
    import torch
    from darcy_mesh import PROJECT_DIFFUSION
    from sampling_trajectory import scores
    from surrogate_solver import PressureSolver

    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.training import config_from_dict

    sections = {"data": {"n_train": 8, "n_val": 0, "n_test": 4}, "model": {"kind": "mesh"},
                "diffusion": {**PROJECT_DIFFUSION, "prediction": "x0"}}
    experiment = DarcyExperiment(config_from_dict(sections), ROOT / "meshes" / "unit_square_r0.msh",
                                 data_dir=tmp_path, run_dir=tmp_path / "run", progress=False)
    normalizer = experiment.fit_normalizer()
    solver = PressureSolver(experiment, normalizer)
    test = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test))  # float64
    x0 = normalizer.normalize(test)
    seen = []

    def oracle(given, t):  # the network's input, and the exact clean fields as its output
        seen.append(given.clone())
        return x0 + 0.0 * given

    estimate = solver.predict(oracle, x0)
    p = experiment.fields.channel("p")
    assert torch.all(seen[0][:, p] == 0) and torch.equal(seen[0][:, 1 - p], x0[:, 1 - p])
    assert scores(experiment, normalizer.denormalize(estimate))["residual"] < 1e-8
    loss, components = solver.loss(1e-3)(oracle, {"x0": test}, None)
    assert float(loss) < 1e-16 and components["residual"] < 1e-16


def test_local_correction_keeps_exact_data_exact_and_lowers_the_residual_of_noised_data(tmp_path):
    import torch
    from darcy_mesh import PROJECT_DIFFUSION
    from local_correction import jacobi_steps
    from sampling_trajectory import scores

    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.training import config_from_dict

    sections = {"data": {"n_train": 8, "n_val": 0, "n_test": 4}, "model": {"kind": "mesh"},
                "diffusion": PROJECT_DIFFUSION}
    experiment = DarcyExperiment(config_from_dict(sections), ROOT / "meshes" / "unit_square_r0.msh",
                                 data_dir=tmp_path, run_dir=tmp_path / "run", progress=False)
    test = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test))
    exact = jacobi_steps(experiment, test, 2)
    assert len(exact) == 3 and all(scores(experiment, state)["residual"] < 1e-8 for state in exact)
    assert torch.equal(exact[-1][:, experiment.fields.channel("K")], test[:, experiment.fields.channel("K")])
    noised = test.clone()
    p = experiment.fields.channel("p")
    noise = torch.randn(noised[:, p].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noised[:, p] += 0.01 * test[:, p].std() * noise
    corrected = [scores(experiment, state)["residual"] for state in jacobi_steps(experiment, noised, 1)]
    assert corrected[1] < 0.5 * corrected[0]

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "local_correction.py"), "--quick", "--mesh",
                           str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path), "--t", "1",
                           "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "local_correction" / "local_correction.json").read_text())
    assert len(summary["corrections"]["1"]) == 3 and (tmp_path / "local_correction" / "local_correction.png").is_file()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "local_correction.py"), "--quick", "--mesh",
                           str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path), "--t", "100"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "local_correction: error: --t must lie in [0, 100)" in proc.stderr


def test_low_noise_denoiser_trains_on_low_noise_and_scores_its_estimates(tmp_path):
    mesh = str(ROOT / "meshes" / "unit_square_r0.msh")
    common = [sys.executable, str(ROOT / "benchmarks" / "low_noise_denoiser.py"), "--quick",
              "--mesh", mesh, "--out", str(tmp_path), "--steps", "3"]
    proc = subprocess.run([*common, "--t-max", "4", "--methods", "ddpm"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "low_noise_denoiser: error: no full-range run" in proc.stderr
    proc = subprocess.run([*common, "--experts", "ddpm:pidm_mean"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "error: --experts: 'ddpm:pidm_mean' is not RUN:EXPERT" in proc.stderr
    proc = subprocess.run([*common, "--t-max", "0"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "low_noise_denoiser: error: --t-max must lie in [1, 100]" in proc.stderr
    # beside the folder's full-range runs; each sampled alone and with its expert, evaluated as the benchmark does
    proc = run_benchmark("--quick", "--mesh", mesh, "--out", str(tmp_path), "--steps", "3", "--methods", "ddpm",
                         "pidm_mean", "--train-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*common, "--t-max", "4", "--methods", "ddpm", "pidm_mean", "--experts", "--n-samples", "3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "low_noise" / "report"
    assert (report / "low_noise.png").stat().st_size > 0
    summary = json.loads((report / "low_noise.json").read_text())
    times = [str(t) for t in range(4)]
    assert list(summary["noised_data"]) == list(summary["one_local_correction"]) == times
    for t in times:  # noise raises the residual with t; one exact local step removes part of it
        assert 0 < summary["one_local_correction"][t]["residual"] < summary["noised_data"][t]["residual"]
    assert all(summary["noised_data"][a]["residual"] < summary["noised_data"][b]["residual"]
               for a, b in zip(times, times[1:]))
    for method in ("ddpm", "pidm_mean"):
        entry = summary["methods"][method]
        assert list(entry["estimate"]) == times and entry["seconds_per_step"] > 0
        assert (tmp_path / "low_noise" / "runs" / f"{method}_t4" / "last.pt").is_file()
    experts = json.loads((report / "experts.json").read_text())
    assert set(experts["methods"]) == {"ddpm", "ddpm+expert", "pidm_mean", "pidm_mean+expert"}
    assert (report / "experts.md").is_file()
    assert all(len(entry["residual"]["per_sample"]) == 3 for entry in experts["methods"].values())


def test_an_expert_trained_beside_its_frozen_run_leaves_that_run_unchanged(tmp_path):
    import torch

    from pidm_fem.training import load_checkpoint

    common = ["--quick", "--mesh", str(ROOT / "meshes" / "unit_square_r0.msh"), "--out", str(tmp_path), "--steps", "2"]
    proc = run_benchmark(*common, "--methods", "pidm_trajectory", "--train-only", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "low_noise_denoiser.py"), *common, "--t-max", "4",
                           "--methods", "pidm_trajectory", "--expert-of", "pidm_trajectory", "--experts",
                           "pidm_trajectory:pidm_trajectory", "--n-samples", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = load_checkpoint(tmp_path / "runs" / "pidm_trajectory" / "last.pt").ema["shadow"]
    pair = load_checkpoint(tmp_path / "low_noise" / "runs" / "pidm_trajectory_t4_of_pidm_trajectory" / "last.pt")
    frozen = {key[len("high."):]: value for key, value in pair.ema["shadow"].items() if key.startswith("high.")}
    assert frozen.keys() == full.keys() and all(torch.equal(frozen[key], full[key]) for key in full)
    diffusion = pair.config["diffusion"]
    assert diffusion["trajectory_every"] > 0 and diffusion["trajectory_steps"] == 50 and diffusion["expert_below"] == 4
    experts = json.loads((tmp_path / "low_noise" / "report" / "experts.json").read_text())
    assert set(experts["methods"]) == {"pidm_trajectory", "pidm_trajectory+expert"}
