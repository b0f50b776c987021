"""Every command fails in one line, before any work, with exit code 2 for bad input and 1 for a failed computation."""

import dataclasses
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pidm_fem.cli import main
from pidm_fem.mesh import unit_square_family
from pidm_fem.training import load_checkpoint, save_checkpoint

COARSE_MESH, OTHER_MESH = unit_square_family()[0], unit_square_family()[1]
RUN = {"data": {"n_train": 4, "n_val": 2, "n_test": 2}, "model": {"kind": "mesh", "width": 8}, "diffusion": {"T": 10},
       "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
       "sampling": {"sampler": "ddim", "ddim_steps": 2}}


def _one_error_line(capsys, *words):
    """The one line of the error on stderr (progress bars, which end in carriage returns, aside)."""
    return _the_error_line(capsys.readouterr().err, *words)


def _the_error_line(err, *words):
    lines = [line.split("\r")[-1].strip() for line in err.split("\n")]
    lines = [line for line in lines if line and not line.startswith(("train ", "ddim sampling", "samples "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _run_file(tmp_path, mesh=COARSE_MESH, name="run.yaml", **changes):
    """The tiny run file of DDPM on ``mesh``, with ``section={key: value}`` changes."""
    sections = {name: {**keys, **changes.get(name, {})} for name, keys in RUN.items()}
    sections["run"] = {"problem": "darcy", "mesh": str(mesh), "methods": ["ddpm"]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.mark.parametrize("changes, words", [
    ({"training": {"batch_size": 8}}, ["training.batch_size", "data.n_train (4)"]),
    ({"training": {"device": "cuda:0"}}, ["training.device", "not available"]),
    ({"model": {"width": 6}}, ["model.width", "multiple of 4"]),
])
def test_late_checks_fail_before_any_sample_file(tmp_path, capsys, changes, words):
    config = _run_file(tmp_path, **changes)
    out = tmp_path / "study"
    code = main(["train", str(config), "--out", str(out)])
    assert code == 2
    _one_error_line(capsys, *words)
    assert _files(out) == []


def test_a_run_folder_refuses_another_run_before_any_sample_file(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["train", str(_run_file(tmp_path)), "--out", str(out)]) == 0
    before = _files(out)
    capsys.readouterr()
    other = _run_file(tmp_path, mesh=OTHER_MESH, name="other.yaml")
    assert main(["train", str(other), "--out", str(out)]) == 2
    _one_error_line(capsys, out, "holds another run")
    assert _files(out) == before  # nothing generated for the other mesh
    assert main(["train", str(out)]) == 0  # the folder resumes by its path alone


def test_bad_counts_are_one_line_usage_errors(tmp_path, capsys):
    for argv in (["data", "darcy", "--mesh", str(OTHER_MESH), "--n", "0", "--out", str(tmp_path / "x.h5")],
                 ["sample", str(tmp_path), "--n", "0"],
                 ["data", "darcy", "--mesh", str(OTHER_MESH), "--n", "3", "--out", str(tmp_path / "x.h5"),
                  "--workers", "-1"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        _one_error_line(capsys, "must be a positive integer")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("option, words", [
    ("split=nowhere", ("--option", "split must be one of")),
    ("colour=3", ("--option", "the darcy problem has no such setting", "colour")),
    ("seedless", ("--option 'seedless'", "expected KEY=VALUE")),
])
def test_bad_problem_options_are_one_line_errors_before_any_file(tmp_path, capsys, option, words):
    problem = "topology" if option.startswith("split") else "darcy"
    argv = ["data", problem, "--mesh", str(OTHER_MESH), "--n", "2", "--out", str(tmp_path / "x.h5"), "--option", option]
    assert main(argv) == 2
    _one_error_line(capsys, *words)
    assert _files(tmp_path) == []


def test_sampling_a_diverged_checkpoint_exits_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["train", str(_run_file(tmp_path)), "--out", str(out)]) == 0
    last = out / "runs" / "ddpm" / "last.pt"
    checkpoint = load_checkpoint(last)
    shadow = {key: value * 1e30 if value.is_floating_point() else value
              for key, value in checkpoint.ema["shadow"].items()}  # finite weights whose samples overflow
    save_checkpoint(last, dataclasses.replace(checkpoint, ema={**checkpoint.ema, "shadow": shadow}))
    samples = tmp_path / "samples"
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "2", "--out", str(samples)]) == 1
    _one_error_line(capsys, last, "non-finite", "nothing was written")
    assert not samples.exists()


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing.msh"
    assert main(["mesh", "info", str(missing)]) == 2
    _one_error_line(capsys, missing)
    from pidm_fem.mesh import MeshError

    with pytest.raises(MeshError):
        main(["mesh", "info", str(missing), "--debug"])
    monkeypatch.setenv("PIDM_FEM_DEBUG", "1")
    with pytest.raises(MeshError):
        main(["mesh", "info", str(missing)])


def test_sigint_during_training_saves_the_step_and_says_how_to_resume(tmp_path):
    config = _run_file(tmp_path, mesh=OTHER_MESH, training={"steps": 100000, "checkpoint_every": 1000, "log_every": 1})
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "pidm_fem.cli", "train", str(config), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = out / "runs" / "ddpm" / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    step = load_checkpoint(out / "runs" / "ddpm" / "last.pt").step
    _the_error_line(proc.stderr.read(), f"SIGINT at step {step} of 100000", "run the same command again to resume")
    assert 2 <= step < 1000  # the interrupted step's own checkpoint, not a periodic one


def test_run_command_maps_failures_to_one_line_and_exit_codes(capsys):
    from pidm_fem.errors import run_command
    from pidm_fem.training import TrainingDiverged

    def diverge():
        raise TrainingDiverged("training diverged at step 7: loss is nan; last good checkpoint run/last.pt (step 6)")

    def disk_full():
        raise OSError(28, "No space left on device", "out/results.json")

    assert run_command("pidm-fem", diverge) == 1
    _one_error_line(capsys, "step 7", "last good checkpoint run/last.pt")
    assert run_command("pidm-fem", disk_full) == 1
    _one_error_line(capsys, "out/results.json", "No space left on device")
    with pytest.raises(TrainingDiverged):
        run_command("pidm-fem", diverge, debug=True)
