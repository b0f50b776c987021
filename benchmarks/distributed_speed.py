"""Speed-up of sample generation over MPI ranks and of data-parallel training over processes.

Side by side in one run, on one machine:

* ``pidm-fem data`` of ``--n`` samples (default: topology problems and their SIMP optima
  on the coarse 2 x 1 mesh, the costly kind) with one process and with ``mpiexec -n R``
  (each rank solving its own samples; the files must be identical), timed as the
  command's wall time less that of the same command for one sample (start-up: imports,
  mesh, compilation);
* ``pidm-fem train`` of a Darcy run file for ``--steps`` steps with one process and with
  ``torchrun --nproc-per-node R`` (the same global batch split over the processes; the
  trained weights must agree), timed by the seconds per step of the training log
  (its first logged window, compilation included, left out).

Writes results.json to ``--out`` and prints the table.

    python benchmarks/distributed_speed.py [--ranks 2] [--n 32] [--steps 60] [--out outputs/distributed_speed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

#: Open MPI refuses to run as root without these (containers and CI run as root)
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "pidm_fem.cli"]


def _timed(command: list[str], log: Path) -> float:
    """Run ``command`` (output to ``log``); its wall time in seconds. Raises on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **MPI_ENV})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def _seconds_per_step(run: Path) -> float:
    """Mean seconds per step of a run's log after its first logged window."""
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    times = [line["seconds_per_step"] for line in lines if line.get("split") == "train"][1:]
    return sum(times) / len(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="processes of the parallel runs")
    parser.add_argument("--problem", default="topology", help="problem of the generated samples")
    parser.add_argument("--data-mesh", type=Path, default=Path("meshes/topology_2x1_coarse.msh"),
                        help="mesh of the generated samples")
    parser.add_argument("--n", type=int, default=32, help="samples generated")
    parser.add_argument("--n-train", type=int, default=224, help="Darcy training samples of the training runs")
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch of the training runs")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh (default: the embedded unit square)")
    parser.add_argument("--out", type=Path, default=Path("outputs/distributed_speed"))
    args = parser.parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    for tool in ("mpiexec", "torchrun"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool}: not found on PATH (it comes with Open MPI and torch)")

    from pidm_fem.atomic_files import write_json
    from pidm_fem.mesh import default_mesh_path
    from pidm_fem.training import load_checkpoint

    mesh = str(args.mesh or default_mesh_path())
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mpi = ["mpiexec", "-n", str(args.ranks)]
    results: dict = {"mesh": mesh, "ranks": args.ranks, "cpu_count": os.cpu_count()}

    data = {}
    for label, launcher in (("1 process", []), (f"{args.ranks} MPI ranks", mpi)):
        key = label.split()[0]
        entry = {}
        for n in (1, args.n):
            path = out / f"data_{key}_{n}.h5"
            command = [*launcher, *CLI, "data", args.problem, "--mesh", str(args.data_mesh), "--n", str(n),
                       "--out", str(path)]
            entry[n] = _timed(command, out / f"data_{key}_{n}.log")
        data[label] = {"wall_seconds": entry[args.n], "start_up_seconds": entry[1],
                       "seconds": entry[args.n] - entry[1], "file": str(out / f"data_{key}_{args.n}.h5")}
    files = [Path(entry["file"]).read_bytes() for entry in data.values()]
    results["data"] = {"problem": args.problem, "mesh": str(args.data_mesh), "n_samples": args.n, "runs": data,
                       "identical": files[0] == files[1],
                       "speed_up": data["1 process"]["seconds"] / data[f"{args.ranks} MPI ranks"]["seconds"]}

    run_file = out / "train.yaml"
    run_file.write_text(yaml.safe_dump({
        "run": {"problem": "darcy", "mesh": mesh, "methods": ["pidm_mean"]},
        "data": {"n_train": args.n_train, "n_val": 16, "n_test": 16},
        "training": {"steps": args.steps, "batch_size": args.batch_size, "log_every": 10, "val_every": 0,
                     "checkpoint_every": args.steps},
    }))
    train = {}
    torchrun = ["torchrun", "--standalone", f"--nproc-per-node={args.ranks}", "-m", "pidm_fem.cli"]
    for label, command in (("1 process", CLI), (f"{args.ranks} torchrun processes", torchrun)):
        folder = out / f"run_{label.split()[0]}"
        if train:  # the data the first run made: both runs train on the same file
            shutil.copytree(out / "run_1" / "data", folder / "data")
        seconds = _timed([*command, "train", str(run_file), "--out", str(folder)], out / f"train_{label.split()[0]}.log")
        train[label] = {"wall_seconds": seconds, "seconds_per_step": _seconds_per_step(folder / "runs" / "pidm_mean"),
                        "folder": str(folder)}
    weights = [load_checkpoint(Path(entry["folder"]) / "runs" / "pidm_mean" / "last.pt").model
               for entry in train.values()]
    difference = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    results["training"] = {
        "steps": args.steps, "global_batch": args.batch_size, "runs": train, "max_weight_difference": difference,
        "speed_up": train["1 process"]["seconds_per_step"] / train[f"{args.ranks} torchrun processes"]["seconds_per_step"],
    }
    path = write_json(out / "results.json", results)
    print(f"| work | 1 process | {args.ranks} processes | speed-up | check |")
    print("|---|---|---|---|---|")
    d, t = results["data"], results["training"]
    print(f"| {args.n} {args.problem} samples (wall time less start-up) | {data['1 process']['seconds']:.1f} s | "
          f"{data[f'{args.ranks} MPI ranks']['seconds']:.1f} s | {d['speed_up']:.2f}x | identical files: {d['identical']} |")
    print(f"| training step, global batch {args.batch_size} | {train['1 process']['seconds_per_step']:.3f} s | "
          f"{train[f'{args.ranks} torchrun processes']['seconds_per_step']:.3f} s | {t['speed_up']:.2f}x | "
          f"max weight difference {difference:.1e} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
