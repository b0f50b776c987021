"""The main job: PIDM against its baselines for Darcy flow on an unstructured mesh.

On the embedded default mesh (or --mesh PATH): generates (or reuses) the Darcy
dataset, trains DDPM, PIDM ("mean" and, unless --no-sample-estimation, "sample"),
physics-guided conditioning and (outside --quick) PIDM with physics on its own
trajectory states and low-noise experts of DDPM and of that PIDM (a second network
for the last steps, trained beside the frozen model), with the same seed, model,
optimiser and steps (side by side in --jobs processes, one per core by default),
samples each (CoCoGen corrections reuse the DDPM and PIDM models), and evaluates physics
(mean |r| of the strong-form residual, against the data's own floor and the
trivial field p = 0; the relative L2 error of p against the pressure solved for
the sample's own K), fidelity (per-field statistics, energy and sliced
Wasserstein distances to the test set, with the test-vs-train floor) and cost; the
mean |r| is also split between the source's region and the rest (results.json).
Writes results.json, results.md, figures (PNG) and fields (PVD/VTU) to --out.

    python benchmarks/darcy_mesh.py --quick          # `make demo`: <= 10 minutes on 2 cores
    python benchmarks/darcy_mesh.py                  # the default (CPU, a few hours)
    python benchmarks/darcy_mesh.py --full --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: the project's choices beyond the paper, for every method (see the README's studies): the network sees
#: elliptic coordinates (the pressure's Neumann Laplacian and log K) and predicts v (a skip-connected x0
#: estimate), and PIDM's residual is differentiated with respect to the pressure only (K held fixed)
PROJECT_DIFFUSION = {"representation": "elliptic", "prediction": "v", "residual_gradient": "state"}
#: run settings of each mode (the sections of a run configuration) and its default mesh
MODES = {
    "quick": {
        "mesh": "unit_square_r1.msh",
        "n_samples": 64,
        "cocogen_after": 200,
        "config": {
            "data": {"n_train": 256, "n_val": 32, "n_test": 64, "seed": 0},
            "model": {"kind": "mesh", "width": 16},
            "diffusion": {"T": 100, "c_residual": 1e-3, "sample_steps": 2, **PROJECT_DIFFUSION},
            "training": {"steps": 350, "batch_size": 16, "lr": 1e-3, "ema_start": 175, "val_every": 175,
                         "checkpoint_every": 175, "log_every": 25, "seed": 0},
            "sampling": {"sampler": "ddim", "ddim_steps": 50, "guidance_scale": 3.0},
        },
    },
    "default": {
        "mesh": "unit_square.msh",
        "n_samples": 128,
        "cocogen_after": 400,
        "config": {
            "data": {"n_train": 1000, "n_val": 64, "n_test": 128, "seed": 0},
            "model": {"kind": "mesh", "width": 16},
            "diffusion": {"T": 100, "c_residual": 1e-3, "sample_steps": 2, **PROJECT_DIFFUSION},
            "training": {"steps": 3000, "batch_size": 16, "lr": 1e-3, "ema_start": 500, "val_every": 250,
                         "checkpoint_every": 100, "log_every": 25, "seed": 0},
            "sampling": {"sampler": "ddim", "ddim_steps": 50, "guidance_scale": 3.0},
        },
    },
    "full": {
        "mesh": "unit_square.msh",
        "n_samples": 256,
        "cocogen_after": 400,
        "config": {
            "data": {"n_train": 10000, "n_val": 256, "n_test": 256, "seed": 0},
            "model": {"kind": "unet", "width": 64},
            "diffusion": {"T": 100, "c_residual": 1e-3, "sample_steps": 4, **PROJECT_DIFFUSION},
            "training": {"steps": 300000, "batch_size": 64, "lr": 1e-4, "ema_start": 1000, "val_every": 5000,
                         "checkpoint_every": 2000, "log_every": 100, "seed": 0},
            "sampling": {"sampler": "ddpm", "guidance_scale": 3.0},
        },
    },
}
#: CoCoGen: residual-gradient steps during the last N denoising steps and M after sampling, each
#: with a per-sample Armijo line search from the given step (a fixed step that is safe for the
#: strong-form residual's h^-4 curvature barely moves the samples: 1e-7 lowered DDPM's residual by 16%),
#: changing the pressure only (K is the sample's coefficient; the corrections solve for its state);
#: the number of steps after sampling is the mode's "cocogen_after"
COCOGEN = {"cocogen_during": 5, "cocogen_step": 1e-3, "cocogen_line_search": True, "cocogen_gradient": "state"}
METHODS = ("ddpm", "pidm_mean", "pidm_sample", "physics_guided", "pidm_trajectory", "ddpm_expert",
           "pidm_trajectory_expert", "cocogen", "pidm_cocogen", "pidm_trajectory_cocogen",
           "pidm_trajectory_expert_ddpm_k", "pidm_trajectory_expert_ddpm_k_high", "pidm_trajectory_expert_on_ddpm_k",
           "pidm_trajectory_expert_on_ddpm_k_high", "pidm_trajectory_expert_given_ddpm_k")
#: methods of --quick unless --methods says otherwise: the trajectory-state PIDM's training (2.6x DDPM's
#: step) and the experts' (a second network per model) would take `make demo` past its 10 minutes
QUICK_METHODS = tuple(m for m in METHODS if not (m.startswith("pidm_trajectory") or m.endswith("_expert")))


#: sampling keys that the --sampler, --ddim-steps and --eta options override
SAMPLER_OPTIONS = ("sampler", "ddim_steps", "eta")


def add_output_folder_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """``--quick``, ``--mesh`` and ``--out`` of the tools that read a darcy_mesh output folder."""
    parser.add_argument("--quick", action="store_const", dest="mode", const="quick", default="default",
                        help="the quick mode's mesh and data")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the mode's)")
    parser.add_argument("--out", type=Path, default=None, help=f"{out_help} (default: outputs/darcy_mesh_<mode>)")


def output_folder_and_mesh(args: argparse.Namespace, tool: str) -> tuple[Path, Path]:
    """The ``--out`` folder and the ``--mesh`` file of a folder tool, or the mode's defaults.

    A mesh that does not load ends the tool with a one-line error naming it (exit code 2).
    """
    from pidm_fem.mesh import MeshError, load_mesh
    from pidm_fem.mesh.builtin import MESH_DIR

    out = args.out or Path(f"outputs/darcy_mesh_{args.mode}")
    mesh = args.mesh or MESH_DIR / MODES[args.mode]["mesh"]
    try:
        load_mesh(mesh)
    except MeshError as err:
        print(f"{tool}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return out, mesh


def data_experiment(args: argparse.Namespace, mesh: Path, out: Path, name: str):
    """A :class:`~pidm_fem.experiments.DarcyExperiment` of the mode's data in the project's coordinates.

    For the tools that read the benchmark's data but train nothing; its run folder is ``out / name``.
    """
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.training import config_from_dict

    config = config_from_dict({"data": MODES[args.mode]["config"]["data"], "model": {"kind": "mesh"},
                               "diffusion": PROJECT_DIFFUSION})
    return DarcyExperiment(config, mesh, data_dir=out / "data", run_dir=out / name)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The device, training-length and network options (here and in the tools that train a network)."""
    parser.add_argument("--device", default="cpu", help="device of the network (the FEM stays on the CPU)")
    parser.add_argument("--steps", type=int, default=None, help="override the mode's training steps")
    parser.add_argument("--width", type=int, default=None, help="override the denoiser's width")
    parser.add_argument("--field-views", action="store_const", const=True, default=None,
                        help="the denoiser also sees the pressure beside its Laplacian (elliptic coordinates)")
    parser.add_argument("--gradient-views", action="store_const", const=True, default=None,
                        help="the denoiser also sees the recovered nodal gradient of every field")
    parser.add_argument("--input-products", action="store_const", const=True, default=None,
                        help="the mesh denoiser's first features also hold products of two linear forms of its "
                             "node inputs")


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that override the run's sampler (here and in sampling_trajectory.py)."""
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None,
                        help="override the sampler (ancestral DDPM visits all T steps; DDIM --ddim-steps of them)")
    parser.add_argument("--ddim-steps", type=int, default=None, help="override the number of DDIM steps")
    parser.add_argument("--eta", type=float, default=None,
                        help="override DDIM's stochasticity (0 deterministic, 1 the ancestral sampler's variance)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="`make demo`: <= 10 min")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="the paper's scale (GPU)")
    parser.set_defaults(mode="default")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the mode's shipped mesh)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/darcy_mesh_<mode>)")
    add_model_arguments(parser)
    parser.add_argument("--expert-steps", type=int, default=None,
                        help="training steps of the low-noise experts (default: those of the other methods)")
    parser.add_argument("--expert-width", type=int, default=None,
                        help="width of the low-noise experts' own networks (default: the model's width)")
    parser.add_argument("--expert-start", choices=("scratch", "full_range"), default=None,
                        help="first weights of the low-noise experts: a fresh network (default) or a copy of "
                             "their full-range model's")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                        help="learning-rate schedule of every method (default: constant)")
    parser.add_argument("--expert-lr-schedule", choices=("constant", "cosine"), default=None,
                        help="learning-rate schedule of the low-noise experts (default: that of the other methods)")
    parser.add_argument("--expert-lr", type=float, default=None,
                        help="(first) learning rate of the low-noise experts (default: that of the other methods)")
    parser.add_argument("--n-samples", type=int, default=None, help="override the number of generated samples")
    parser.add_argument("--no-sample-estimation", action="store_true", help="skip PIDM with 'sample' estimation")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="methods to compare (default: all, without the pidm_trajectory and expert ones in "
                             "--quick; cocogen and ddpm_expert need ddpm, pidm_cocogen pidm_mean, "
                             "pidm_trajectory_cocogen and pidm_trajectory_expert pidm_trajectory, "
                             "pidm_trajectory_expert_ddpm_k(_high) pidm_trajectory_expert and ddpm, "
                             "pidm_trajectory_expert_on_ddpm_k(_high) and _given_ddpm_k pidm_trajectory and ddpm)")
    parser.add_argument("--c-residual", type=float, default=None, help="override the residual weight of PIDM")
    parser.add_argument("--output-modes", type=int, default=None,
                        help="confine each field of the clean estimate to the training data's leading principal "
                             "components (this many; 0: off)")
    parser.add_argument("--representation", choices=("nodal", "elliptic"), default=None,
                        help="override the fields the network sees (nodal p, K or elliptic coordinates)")
    parser.add_argument("--prediction", choices=("x0", "v"), default=None,
                        help="override what the network predicts (x0 directly, or v: a skip-connected x0)")
    parser.add_argument("--physics-t-fraction", type=float, default=None,
                        help="PIDM's residual acts on the steps t < fraction * T only")
    parser.add_argument("--residual", choices=("strong", "weak", "preconditioned"), default=None,
                        help="the residual vector the physics terms see (PIDM loss, guidance, CoCoGen): nodal "
                             "strong form, weak vector, or the strong form through the inverse unit Laplacian; "
                             "the evaluation always reports the strong form")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="network evaluations along PIDM-sample's differentiable DDIM chain")
    parser.add_argument("--residual-gradient", choices=("all", "state"), default=None,
                        help="differentiate PIDM's residual with respect to all fields or the pressure only")
    parser.add_argument("--min-snr-gamma", type=float, default=None,
                        help="clip of the data loss's min-SNR weight (5; a larger clip weighs the low-noise steps "
                             "more, up to the noise-prediction loss's SNR weight)")
    parser.add_argument("--c-state", type=float, default=None,
                        help="weight of PIDM's state misfit term (squared relative error of p against the "
                             "pressure solved for the estimate's own K)")
    parser.add_argument("--state-on", choices=("all", "trajectory"), default=None,
                        help="the state misfit acts on every estimate or on the trajectory states' only")
    parser.add_argument("--trajectory-every", type=int, default=None,
                        help="PIDM's physics terms also act on states of the network's own DDIM trajectories, "
                             "drawn afresh every this many steps (0: off)")
    parser.add_argument("--trajectory-steps", type=int, default=None,
                        help="network evaluations along those trajectories")
    parser.add_argument("--trajectory-t-fraction", type=float, default=None,
                        help="the trajectory states are taken at steps t < fraction * T")
    parser.add_argument("--trajectory-eta", type=float, default=None,
                        help="stochasticity of those trajectories' DDIM steps (0 deterministic, 1 ancestral)")
    add_sampler_arguments(parser)
    parser.add_argument("--cocogen-gradient", choices=("all", "state"), default=COCOGEN["cocogen_gradient"],
                        help="CoCoGen corrections change all fields or the pressure only")
    parser.add_argument("--cocogen-step", type=float, default=COCOGEN["cocogen_step"],
                        help="first trial step of the CoCoGen line search (normalised units)")
    parser.add_argument("--cocogen-after", type=int, default=None,
                        help="CoCoGen correction steps after sampling (default: the mode's, 200 quick, 400 otherwise)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the dataset")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes training the methods side by side (default: one per available core, "
                             "at most one per trained method)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process, which trains what the side-by-side processes leave "
                             "(the experts on another model's K), samples and evaluates (default 1, as each "
                             "side-by-side process; more help only on cores that no other process uses)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the methods and stop (a later run without it resumes the finished runs, "
                             "samples and evaluates)")
    return parser.parse_args(argv)


#: command-line options that override one configuration key each: option -> (section, key)
OVERRIDES = {
    "width": ("model", "width"),
    "field_views": ("model", "field_views"),
    "gradient_views": ("model", "gradient_views"),
    "input_products": ("model", "input_products"),
    "lr_schedule": ("training", "lr_schedule"),
    "output_modes": ("model", "output_modes"),
    "c_residual": ("diffusion", "c_residual"),
    "representation": ("diffusion", "representation"),
    "prediction": ("diffusion", "prediction"),
    "physics_t_fraction": ("diffusion", "physics_t_fraction"),
    "residual": ("diffusion", "residual"),
    "residual_gradient": ("diffusion", "residual_gradient"),
    "sample_steps": ("diffusion", "sample_steps"),
    "min_snr_gamma": ("diffusion", "min_snr_gamma"),
    "c_state": ("diffusion", "c_state"),
    "state_on": ("diffusion", "state_on"),
    "trajectory_every": ("diffusion", "trajectory_every"),
    "trajectory_steps": ("diffusion", "trajectory_steps"),
    "trajectory_t_fraction": ("diffusion", "trajectory_t_fraction"),
    "trajectory_eta": ("diffusion", "trajectory_eta"),
    **{option: ("sampling", option) for option in SAMPLER_OPTIONS},
}


def base_config(args: argparse.Namespace) -> dict:
    """The mode's configuration sections with the command-line overrides.

    ``args`` holds ``mode``, ``device`` and ``steps`` and any of the :data:`OVERRIDES` options
    (another tool's parser may define a subset of them; a missing or None one keeps the mode's value).
    ``--expert-width``, ``--expert-steps``, ``--expert-lr``, ``--expert-lr-schedule`` and ``--expert-start`` add model,
    training and diffusion keys of the low-noise experts as the extra sections
    ``darcy_methods.EXPERT_SECTIONS``; ``darcy_methods.method_config`` applies them to the experts.
    """
    config = {section: dict(values) for section, values in MODES[args.mode]["config"].items()}
    config["training"]["device"] = args.device
    for option, (section, key) in OVERRIDES.items():
        if getattr(args, option, None) is not None:
            config[section][key] = getattr(args, option)
    if args.steps is not None:
        config["training"].update(training_length(config["training"], args.steps))
    expert = {"model": {}, "training": {}, "diffusion": {}}
    if getattr(args, "expert_width", None) is not None:
        expert["model"]["expert_width"] = args.expert_width
    if getattr(args, "expert_steps", None) is not None:
        expert["training"].update(training_length(config["training"], args.expert_steps))
    if getattr(args, "expert_lr", None) is not None:
        expert["training"]["lr"] = args.expert_lr
    if getattr(args, "expert_lr_schedule", None) is not None:
        expert["training"]["lr_schedule"] = args.expert_lr_schedule
    if getattr(args, "expert_start", None) is not None:
        expert["diffusion"]["expert_start"] = args.expert_start
    if any(expert.values()):
        from darcy_methods import EXPERT_SECTIONS

        config.update({extra: expert[target] for extra, target in EXPERT_SECTIONS.items() if expert[target]})
    return config


def training_length(training: dict, steps: int) -> dict:
    """The training keys of a run of ``steps`` steps: ``steps``, and EMA from at most half-way."""
    return {"steps": steps, "ema_start": min(training["ema_start"], steps // 2)}


def selected_methods(args: argparse.Namespace) -> list[str]:
    """The methods to compare.

    --methods, else the mode's (:data:`QUICK_METHODS` or all), less pidm_sample under --no-sample-estimation.
    """
    chosen = args.methods or (QUICK_METHODS if args.mode == "quick" else METHODS)
    return [m for m in chosen if not (m == "pidm_sample" and args.no_sample_estimation)]


def write_fields(experiment, samples: dict, residuals: dict, folder: Path) -> None:
    """The first sample of each method (p, K, |r|) as a PVD/VTU series per method."""
    import firedrake as fd

    layout = experiment.generator.layout
    for method, rows in samples.items():
        functions = layout.functions(rows[0])
        r = fd.Function(experiment.problem.V, name="abs_residual")
        r.dat.data[:] = np.abs(residuals[method][0])
        fd.VTKFile(str(folder / f"{method}.pvd")).write(functions["p"], functions["K"], r)


def write_figures(experiment, samples: dict, residuals: dict, summary: dict, logs: dict, folder: Path) -> None:
    """Sample grids, residual maps, residual histograms and training curves."""
    import firedrake as fd

    from pidm_fem.viz import plot_fields, plot_histograms, plot_training_curves

    layout, V = experiment.generator.layout, experiment.problem.V
    names = list(samples)
    rows, titles = [], []
    for method in names:
        for i in range(min(3, len(samples[method]))):
            functions = layout.functions(samples[method][i])
            rows.append([functions["p"], functions["K"]])
            titles.append([f"{method} #{i}: p", f"{method} #{i}: K"])
    plot_fields(rows, folder / "samples.png", titles)

    maps, map_titles = [], []
    for method in names:
        r = fd.Function(V)
        r.dat.data[:] = np.log10(np.abs(residuals[method][0]) + 1e-16)
        maps.append(r)
        map_titles.append(f"{method}: log10 |r|")
    columns = 3
    grid = [maps[i:i + columns] for i in range(0, len(maps), columns)]
    grid_titles = [map_titles[i:i + columns] for i in range(0, len(maps), columns)]
    grid[-1] += [None] * (columns - len(grid[-1]))
    grid_titles[-1] += [""] * (columns - len(grid_titles[-1]))
    plot_fields(grid, folder / "residual_maps.png", grid_titles)

    per_sample = {m: np.asarray(summary["methods"][m]["residual"]["per_sample"]) for m in names}
    references = {"trivial p = 0": summary["trivial"]["residual"]["mean"]}
    xlabel = f"per-sample mean |r| (the data's own: {summary['data']['residual']['mean']:.1e})"
    plot_histograms(per_sample, folder / "residual_histogram.png", xlabel, references)
    plot_training_curves(logs, folder / "training_curves.png")


def evaluate_runs(experiment, runs: dict) -> tuple[dict, dict]:
    """Metrics of every method's samples against the experiment's test and train splits.

    Returns
    -------
    summary : dict
        :func:`~pidm_fem.evaluation.evaluate_methods` results, with each method's cost.
    residuals : dict
        ``{method: nodal residual (n_samples, n)}`` of the samples.
    """
    import torch

    from pidm_fem.evaluation import evaluate_methods

    def float64_nodes(rows: np.ndarray) -> torch.Tensor:  # the physics is evaluated in float64
        return experiment.fields.to_nodes(torch.as_tensor(rows, dtype=torch.float64))

    splits = experiment.dataset()
    nodes = {method: float64_nodes(run["rows"]) for method, run in runs.items()}
    source = experiment.problem.source_region()
    summary = evaluate_methods(
        nodes, float64_nodes(splits.test), float64_nodes(splits.train), experiment.strong_residual,
        weights=experiment.problem.lumped_mass(), channel_names=experiment.fields.names,
        state_solver=experiment.solve_state, regions={"source": source, "elsewhere": ~source},
    )
    for method, run in runs.items():
        summary["methods"][method]["cost"] = {"train_seconds_per_step": run["seconds_per_step"],
                                              "sample_seconds_per_sample": run["sample_seconds_per_sample"]}
    with torch.no_grad():
        residuals = {method: experiment.strong_residual(x).numpy() for method, x in nodes.items()}
    return summary, residuals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from darcy_methods import TRAINED, needed_methods, train_all, train_and_sample, train_in_parallel
    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.evaluation import markdown_table
    from pidm_fem.mesh import MeshError, load_mesh
    from pidm_fem.mesh.builtin import MESH_DIR

    t_start = time.perf_counter()
    mode = MODES[args.mode]
    mesh_path = args.mesh or MESH_DIR / mode["mesh"]
    out = args.out or Path(f"outputs/darcy_mesh_{args.mode}")
    try:
        load_mesh(mesh_path)
    except MeshError as err:
        print(f"darcy_mesh: error: {err}", file=sys.stderr)
        return 2
    methods = selected_methods(args)
    for method in methods:
        missing = [needed for needed in needed_methods(method) if needed not in methods]
        if missing:
            print(f"darcy_mesh: error: --methods: {method} samples the {' and '.join(missing)} model"
                  f"{'s' if len(missing) > 1 else ''}, so it needs {' and '.join(missing)}", file=sys.stderr)
            return 2
    jobs = len(os.sched_getaffinity(0)) if args.jobs is None else args.jobs
    for option, value in (("--jobs", jobs), ("--threads", args.threads)):
        if value < 1:
            print(f"darcy_mesh: error: {option} must be at least 1, got {value}", file=sys.stderr)
            return 2
    train_in_parallel(base_config(args), methods, mesh_path, out, args.workers, jobs, progress=True)
    torch.set_num_threads(args.threads)  # after the side-by-side processes, which inherit OMP_NUM_THREADS=1
    if args.train_only:
        train_all(base_config(args), methods, mesh_path, out, args.workers, progress=True)
        print(f"trained {', '.join(m for m in methods if m in TRAINED)} in {out / 'runs'}; "
              f"run again without --train-only to sample and evaluate")
        return 0
    n_samples = args.n_samples or mode["n_samples"]
    cocogen_after = mode["cocogen_after"] if args.cocogen_after is None else args.cocogen_after
    cocogen = {**COCOGEN, "cocogen_step": args.cocogen_step, "cocogen_after": cocogen_after,
               "cocogen_gradient": args.cocogen_gradient}
    runs, experiment = train_and_sample(base_config(args), methods, mesh_path, out, n_samples, cocogen,
                                        args.workers, progress=True)
    summary, residuals = evaluate_runs(experiment, {m: runs[m] for m in methods})
    summary["run"] = {"mode": args.mode, "mesh": str(mesh_path), "n_nodes": experiment.fields.n_nodes,
                      "n_samples": n_samples, "methods": methods, "config": base_config(args), "cocogen": cocogen,
                      "jobs": jobs, "torch_threads": torch.get_num_threads(), "wall_seconds": None}
    table = markdown_table(summary)
    samples = {m: runs[m]["rows"] for m in methods}
    with atomic_directory(out / "report") as tmp:
        (tmp / "fields").mkdir()
        write_fields(experiment, samples, residuals, tmp / "fields")
        write_figures(experiment, samples, residuals, summary,
                      {m: runs[m]["log"] for m in methods if m in TRAINED}, tmp)
        summary["run"]["wall_seconds"] = time.perf_counter() - t_start
        write_json(tmp / "results.json", summary)
        (tmp / "results.md").write_text(
            f"# Darcy on {mesh_path.name} ({args.mode} mode, {n_samples} samples per method)\n\n{table}\n")
    print(table)
    print(f"\noutputs in {out / 'report'}: results.json, results.md, samples.png, residual_maps.png, "
          f"residual_histogram.png, training_curves.png, fields/*.pvd (wall {summary['run']['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
