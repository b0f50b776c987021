"""How precise the benchmark's denoiser can make its last step when it trains on the low-noise steps only.

A trained model's samples cannot beat its last step's "bound": its clean estimate of
test data noised at t = 1 (sampling_trajectory.py). The full-range denoisers leave a
bound 2-3x above what one exact local correction of the equation leaves
(local_correction.py). This tool trains the benchmark's denoiser (the mode's model,
representation, optimiser, batch, steps and EMA; a method's loss: ddpm, pidm_mean or
pidm_trajectory) on timesteps t < --t-max only (``diffusion.expert_below``: a low-noise
expert, trained beside the folder's full-range run of the same method, or of
--expert-of, frozen), so that all of its capacity and every training step go
to the precision of the low-noise estimate, and scores its estimates of the test data
noised at each t < --t-max (the same noise draw as sampling_trajectory.py) beside the
noised data and one exact local correction of it. With ``--experts RUN:EXPERT ...`` it
also samples each full-range run RUN of the output folder (darcy_mesh's
``runs/<RUN>``, trained with the same options) alone and with the low-noise expert of
the loss EXPERT (one of --methods) taking over the steps t < --t-max
(:class:`~pidm_fem.diffusion.TimestepExperts`), by the benchmark's sampler and seed,
and evaluates them as the benchmark does (``--experts`` alone: each method with its own
expert). Writes
``low_noise/report/low_noise.json``, ``low_noise.png`` and (with ``--experts``)
``experts.json`` and ``experts.md`` to the output folder, whose ``data/`` is
darcy_mesh's cache; the runs are resumable in ``low_noise/runs/<method>_t<t-max>``
(``..._of_<RUN>`` with --expert-of).

The expert trains inside the pair it is sampled in, the folder's full-range run
(``runs/<method>``, or ``runs/<RUN>`` with ``--expert-of RUN``) frozen for
t >= --t-max; the ``pidm_trajectory`` loss draws its trajectory states through both
(chains of the sampler's length, states at t < --t-max), so that its physics acts on
the states the sampler visits there (darcy_mesh.py's pidm_trajectory_expert at
--t-max 10). For the other losses the frozen run serves the sampling only. Each
command needs the full-range runs it names (darcy_mesh.py with the same options):

    python benchmarks/low_noise_denoiser.py --quick --steps 1500 --t-max 10 --methods ddpm pidm_mean
    python benchmarks/low_noise_denoiser.py --quick --steps 1500 --t-max 10 --methods ddpm pidm_mean --experts
    python benchmarks/low_noise_denoiser.py --quick --steps 1500 --methods pidm_mean --experts pidm_trajectory:pidm_mean
    python benchmarks/low_noise_denoiser.py --quick --steps 1500 --methods pidm_trajectory \
        --expert-of pidm_trajectory --experts pidm_trajectory:pidm_trajectory
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: trained methods whose loss this tool can restrict (no condition channels)
METHODS = ("ddpm", "pidm_mean", "pidm_trajectory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from darcy_mesh import add_model_arguments, add_output_folder_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_folder_arguments(parser, "output folder, whose data/ is reused")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["ddpm"], help="losses to train with")
    parser.add_argument("--t-max", type=int, default=10, help="train on the timesteps t < t-max")
    add_model_arguments(parser)
    parser.add_argument("--experts", nargs="*", default=None, metavar="RUN:EXPERT",
                        help="also sample these full-range runs of the folder alone and with the expert of the loss "
                             "EXPERT for t < t-max (no value: each method with its own expert)")
    parser.add_argument("--n-samples", type=int, default=None, help="samples per model (default: the mode's)")
    parser.add_argument("--expert-of", choices=METHODS, default=None, metavar="RUN",
                        help="train each expert beside the folder's full-range run RUN, frozen for t >= t-max "
                             "(default: the run of the expert's own method)")
    return parser.parse_args(argv)


def expert_config(args, method: str):
    """The run configuration of the low-noise expert of ``method`` (``diffusion.expert_below`` = t_max).

    That of darcy_mesh's expert method where it has one (``pidm_trajectory``: trajectory
    states by chains of the sampler's length; not the experts on another model's
    coefficient), else of ``method``.
    """
    from darcy_mesh import base_config
    from darcy_methods import COEFFICIENT_OF, EXPERT_OF, method_config

    base = base_config(args)
    base["diffusion"] = {**base["diffusion"], "expert_below": args.t_max}
    own_expert = {run: expert for expert, run in EXPERT_OF.items() if expert not in COEFFICIENT_OF}
    return method_config(base, own_expert.get(method, method))


def expert_pairs(values: list[str] | None, methods: list[str]) -> list[tuple[str, str]]:
    """``(full-range run, expert loss)`` pairs of ``--experts`` (None: none; []: each method with itself).

    Raises
    ------
    ValueError
        If a value is not ``RUN:EXPERT`` with RUN a run the tool can sample and EXPERT one of ``methods``.
    """
    from sampling_trajectory import UNCONDITIONED

    if values is None:
        return []
    if not values:
        return [(method, method) for method in methods]
    pairs = []
    for value in values:
        run, _, expert = value.partition(":")
        if run not in UNCONDITIONED or expert not in methods:
            raise ValueError(f"{value!r} is not RUN:EXPERT with RUN one of {', '.join(UNCONDITIONED)} and EXPERT "
                             f"one of --methods ({', '.join(methods)})")
        pairs.append((run, expert))
    return pairs


def sample_with_expert(args, config, mesh, out: Path, method: str, expert) -> dict[str, dict]:
    """The samples of ``method``'s full-range run in ``out/runs`` alone and with ``expert`` for t < t_max.

    Returns ``{method: run, method + "+expert": run}``, each run as darcy_mesh's
    evaluation takes it (rows, seconds per training step, seconds per sample).
    """
    import time

    from darcy_mesh import MODES
    from darcy_methods import seconds_per_step

    from pidm_fem.diffusion import TimestepExperts
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.training.trainer import LOG

    run_dir = out / "runs" / method
    full = DarcyExperiment(config, mesh, data_dir=out / "data", run_dir=run_dir)
    n_samples = args.n_samples or MODES[args.mode]["n_samples"]
    runs = {}
    with_expert = (f"{method}+expert", lambda model, _: TimestepExperts(expert, model, args.t_max))
    for name, wrap in ((method, None), with_expert):
        start = time.perf_counter()
        rows = full.sample(n_samples, seed=1, wrap=wrap)
        runs[name] = {"rows": rows, "seconds_per_step": seconds_per_step(run_dir / LOG),
                      "sample_seconds_per_sample": (time.perf_counter() - start) / n_samples}
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import torch
    from darcy_mesh import MODES, base_config, output_folder_and_mesh
    from darcy_methods import method_config, seconds_per_step
    from local_correction import jacobi_steps
    from sampling_trajectory import scores

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.diffusion import noised_data_estimates
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.training.trainer import LOG
    from pidm_fem.viz import plot_trajectories

    out, mesh = output_folder_and_mesh(args, "low_noise_denoiser")
    T = MODES[args.mode]["config"]["diffusion"]["T"]
    if not 1 <= args.t_max <= T:
        print(f"low_noise_denoiser: error: --t-max must lie in [1, {T}]", file=sys.stderr)
        return 2
    try:
        pairs = expert_pairs(args.experts, args.methods)
    except ValueError as err:
        print(f"low_noise_denoiser: error: --experts: {err}", file=sys.stderr)
        return 2
    beside = {method: args.expert_of or method for method in args.methods}
    needed = [run for run, _ in pairs] + list(beside.values())
    missing = [run for run in needed if not (out / "runs" / run / "last.pt").is_file()]
    if missing:
        print(f"low_noise_denoiser: error: no full-range run {out / 'runs' / missing[0] / 'last.pt'} "
              f"(train it with darcy_mesh.py and the same options first)", file=sys.stderr)
        return 2
    folder = out / "low_noise"
    timesteps = list(range(args.t_max))
    results, noised, corrected, sampled = {}, None, None, {}
    for method in args.methods:
        config = expert_config(args, method)
        suffix = f"_of_{args.expert_of}" if args.expert_of else ""
        run_dir = folder / "runs" / f"{method}_t{args.t_max}{suffix}"
        experiment = DarcyExperiment(config, mesh, data_dir=out / "data", run_dir=run_dir)
        high, _ = DarcyExperiment(method_config(base_config(args), beside[method]), mesh, data_dir=out / "data",
                                  run_dir=out / "runs" / beside[method]).load_denoiser()
        experiment.train(high)
        pair, normalizer = experiment.load_denoiser()
        model = pair.low
        test = experiment.node_tensor(experiment.dataset().test).to(torch.device(args.device))
        with torch.no_grad():
            estimates = noised_data_estimates(model, experiment.schedule, normalizer, test, timesteps,
                                              generator=torch.Generator(test.device).manual_seed(3))
        results[method] = {"seconds_per_step": seconds_per_step(run_dir / LOG),
                           "estimate": {t: scores(experiment, estimates[t][1]) for t in timesteps}}
        for run in [run for run, expert in pairs if expert == method]:
            sampled.update(sample_with_expert(args, method_config(base_config(args), run), mesh, out, run, model))
        if noised is None:
            noised = {t: scores(experiment, estimates[t][0]) for t in timesteps}
            corrected = {t: scores(experiment, jacobi_steps(experiment, estimates[t][0].cpu().double(), 1)[1])
                         for t in timesteps}
    summary = {"mesh": str(mesh), "t_max": args.t_max, "config": base_config(args), "noised_data": noised,
               "one_local_correction": corrected, "methods": results}
    curves = {"noised data": noised, "one local correction": corrected,
              **{f"{method} estimate": entry["estimate"] for method, entry in results.items()}}
    panels = {title: {label: (timesteps, [curve[t][key] for t in timesteps], "-o") for label, curve in curves.items()}
              for title, key in (("mean |r| (strong form)", "residual"), ("relative state error", "state_error"))}
    table = None
    if sampled:
        from darcy_mesh import evaluate_runs

        from pidm_fem.evaluation import markdown_table

        evaluated, _ = evaluate_runs(experiment, sampled)  # the last expert's experiment: the same data
        table = markdown_table(evaluated)
    with atomic_directory(folder / "report") as tmp:
        write_json(tmp / "low_noise.json", summary)
        plot_trajectories(panels, tmp / "low_noise.png", "timestep t of the noised test data")
        if table is not None:
            write_json(tmp / "experts.json", evaluated)
            (tmp / "experts.md").write_text(f"# Full-range models alone and with the expert for t < {args.t_max}\n\n"
                                            f"{table}\n")
    print("| t | noised data r | one local correction r | "
          + " | ".join(f"{method} estimate r" for method in results) + " |")
    print("|---|---|---|" + "---|" * len(results))
    for t in timesteps:
        print(f"| {t} | {noised[t]['residual']:.3g} | {corrected[t]['residual']:.3g} | "
              + " | ".join(f"{entry['estimate'][t]['residual']:.3g}" for entry in results.values()) + " |")
    if table is not None:
        print(table)
    print(f"outputs in {folder / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
