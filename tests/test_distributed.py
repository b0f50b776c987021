"""Runs of two processes: sample files over MPI ranks, data-parallel training over torchrun and mpiexec."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pidm_fem.data.store import SampleFile
from pidm_fem.mesh import unit_square_family
from pidm_fem.physics.problems import build_problem
from pidm_fem.training import load_checkpoint

MESH = unit_square_family()[0]
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1",
       "PETSC_OPTIONS": "-options_left no"}
CLI = [sys.executable, "-m", "pidm_fem.cli"]
MPI2 = ["mpiexec", "-n", "2"]
TORCHRUN2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
             "pidm_fem.cli"]
RUN = {"run": {"problem": "darcy", "mesh": str(MESH), "methods": ["pidm_mean"]},
       "data": {"n_train": 8, "n_val": 2, "n_test": 2},
       "model": {"kind": "mesh", "width": 8},
       "diffusion": {"T": 10},
       "training": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "val_every": 0},
       "sampling": {"ddim_steps": 2}}

pytestmark = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs Open MPI's mpiexec")


def _run(command, timeout=600):
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_two_mpi_ranks_write_the_file_of_one_process_and_resume_a_partial_one(tmp_path):
    one, two, resumed = tmp_path / "one.h5", tmp_path / "two.h5", tmp_path / "resumed.h5"
    data = ["data", "darcy", "--mesh", str(MESH), "--n", "5"]
    _run([*CLI, *data, "--out", str(one)])
    printed = _run([*MPI2, *CLI, *data, "--out", str(two)]).stdout
    assert printed.count("5 darcy samples") == 1 and "(2 ranks)" in printed  # rank 0 alone reports
    assert one.read_bytes() == two.read_bytes()
    # a run stopped after two rows (a journal, as a killed run leaves it) is completed by two ranks
    problem = build_problem("darcy", str(MESH), seed=0)
    store = SampleFile.open_for_writing(resumed, 5, problem.fingerprint, problem.settings(),
                                        {n: problem.layout.dof_coordinates(n) for n in problem.layout.names},
                                        problem.inadmissible)
    for index in (0, 3):
        store.write(index, problem.sample(index))
    store.flush()
    store.journal.close()
    _run([*MPI2, *CLI, *data, "--out", str(resumed)])
    assert one.read_bytes() == resumed.read_bytes()


def _train(launcher, run_file, out, steps=None):
    extra = [] if steps is None else ["--set", f"training.steps={steps}"]
    if steps is not None and (out / "run.yaml").is_file():  # resume with more steps: a new run file
        spec = yaml.safe_load((out / "run.yaml").read_text())
        spec["training"]["steps"] = steps
        (out / "run.yaml").write_text(yaml.safe_dump(spec))
        _run([*launcher, "train", str(out)])
    else:
        _run([*launcher, "train", str(run_file), "--out", str(out), *extra])
    return load_checkpoint(out / "runs" / "pidm_mean" / "last.pt")


def _close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"largest difference {worst:.2e}")
    assert worst < atol, worst
    return worst


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    run_file = folder / "run.yaml"
    run_file.write_text(yaml.safe_dump(RUN))
    return run_file, _train(CLI, run_file, folder / "run")


def test_two_torchrun_processes_train_the_weights_of_one(one_process, tmp_path):
    run_file, single = one_process
    split = _train(TORCHRUN2, run_file, tmp_path / "run")
    assert split.step == single.step == 4
    _close(single.model, split.model, atol=1e-6)
    _close(single.ema["shadow"], split.ema["shadow"], atol=1e-6)


def test_two_mpi_ranks_train_the_weights_of_one_and_a_run_resumes_with_another_count(one_process, tmp_path):
    run_file, single = one_process
    folder = tmp_path / "run"
    half = _train([*MPI2, *CLI], run_file, folder, steps=2)  # 2 steps on two ranks ...
    assert half.step == 2
    resumed = _train(CLI, run_file, folder, steps=4)  # ... then 2 more on one process
    assert resumed.step == 4
    _close(single.model, resumed.model, atol=1e-6)
    lines = (folder / "runs" / "pidm_mean" / "log.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"train"' in line]) == 4  # one log, written once per step


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    run_file = tmp_path / "odd.yaml"
    run_file.write_text(yaml.safe_dump({**RUN, "training": {**RUN["training"], "batch_size": 3}}))
    done = subprocess.run([*MPI2, *CLI, "train", str(run_file), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode != 0
    assert "do not split evenly over 2 processes" in done.stderr
    assert not (tmp_path / "r").exists()  # refused before any data or training
