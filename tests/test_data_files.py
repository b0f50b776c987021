"""Sample files survive anything: SIGKILL at any moment, damaged journals, bad rows, a journal removed mid-run."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pidm_fem.data import BadSample, DatasetError, generate_samples, load_samples, partial_path

ROW = 500
FIELDS = {"a": np.zeros((ROW // 2, 2)), "b": np.ones((ROW // 2, 2))}
SETTINGS = {"seed": 3}

#: a child process that generates a synthetic file: row i is drawn from a generator seeded by i
CHILD = textwrap.dedent(
    """
    import functools, sys, time
    import numpy as np
    from pidm_fem.data import generate_samples

    def row(delay, index):
        time.sleep(delay)
        return np.random.default_rng(index).normal(size={row})

    def make(delay):
        return functools.partial(row, delay)

    if __name__ == "__main__":
        path, n, workers, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        fields = {{"a": np.zeros(({row} // 2, 2)), "b": np.ones(({row} // 2, 2))}}
        generate_samples(path, n, functools.partial(make, delay), "synthetic", {{"seed": 3}}, fields,
                         workers=workers, flush_every=7, progress=False)
    """
).format(row=ROW)


def synthetic_row(index: int) -> np.ndarray:
    return np.random.default_rng(index).normal(size=ROW)


def _make():
    return synthetic_row


def _generate(path, n=40, make=_make, **kw):
    return generate_samples(path, n, make, "synthetic", SETTINGS, FIELDS, progress=False, **kw)


def _child(script, path, n, workers, delay):
    return subprocess.Popen([sys.executable, str(script), str(path), str(n), str(workers), str(delay)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_at_random_moments_then_resume_gives_the_same_bytes(tmp_path, workers):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    n, delay = 200, 0.004
    reference = tmp_path / "reference.h5"
    assert _child(script, reference, n, 1, 0.0).wait(timeout=120) == 0
    path = tmp_path / "killed.h5"
    rng = random.Random(workers)
    kills, sizes, attempts = 0, [], 0
    while kills < 5:
        attempts += 1
        assert attempts < 40, "the child finished before every kill"
        proc = _child(script, path, n, workers, delay)
        # the first kill comes before any row, the others at a random moment after the first row
        header = partial_path(path).stat().st_size if partial_path(path).exists() and kills else 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and (
            not partial_path(path).exists() or partial_path(path).stat().st_size <= header
        ):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3) if kills else 0.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if path.exists():  # it finished before the kill (or between the rename and the journal's removal)
            assert path.read_bytes() == reference.read_bytes()
            path.unlink()
            partial_path(path).unlink(missing_ok=True)
            continue
        kills += 1
        sizes.append(partial_path(path).stat().st_size)
    record = 8 + 8 * ROW + 4
    assert len({size // record for size in sizes}) > 1, sizes  # the kills came at different rows
    final = _child(script, path, n, workers, 0.0)
    assert final.wait(timeout=120) == 0, final.stderr.read()
    assert path.read_bytes() == reference.read_bytes()
    assert not partial_path(path).exists()


def test_damaged_journals_are_set_aside_in_one_line_and_the_rerun_succeeds(tmp_path, caplog):
    reference = _generate(tmp_path / "reference.h5")
    for damage in ("truncated header", "random bytes", "bad record"):
        path = tmp_path / f"{damage.replace(' ', '_')}.h5"
        with pytest.raises(BadSample):
            _generate(path, make=lambda: _fail_at(25))  # leaves a journal of 25 rows
        journal = partial_path(path)
        data = journal.read_bytes()
        if damage == "truncated header":
            journal.write_bytes(data[:30])
        elif damage == "random bytes":
            journal.write_bytes(np.random.default_rng(0).bytes(len(data)))
        else:  # flip a byte in the first record's values
            header_end = len(data) - 25 * (8 + 8 * ROW + 4)
            journal.write_bytes(data[: header_end + 20] + bytes([data[header_end + 20] ^ 0xFF]) + data[header_end + 21:])
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert _generate(path) == path
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1 and str(journal) in messages[0] and "set aside" in messages[0], messages
        assert "\n" not in messages[0]
        assert journal.with_name(journal.name + ".damaged").exists()
        assert path.read_bytes() == reference.read_bytes()


def test_a_torn_last_record_is_dropped_and_the_rest_kept(tmp_path, caplog):
    reference = _generate(tmp_path / "reference.h5")
    path = tmp_path / "torn.h5"
    with pytest.raises(BadSample):
        _generate(path, make=lambda: _fail_at(10))
    journal = partial_path(path)
    with open(journal, "ab") as out:
        out.write(b"\x05" * 100)  # half a record, as a killed write leaves it
    calls = []
    with caplog.at_level("WARNING"):
        _generate(path, make=lambda: _counting(calls))
    assert "torn" in caplog.records[0].getMessage()
    assert len(calls) == 30 and path.read_bytes() == reference.read_bytes()


def _fail_at(bad: int):
    def row(index):
        if index == bad:
            return np.full(ROW, np.nan)
        return synthetic_row(index)

    return row


def _counting(calls):
    def row(index):
        calls.append(index)
        return synthetic_row(index)

    return row


def test_bad_rows_are_refused_on_write_and_on_load(tmp_path):
    path = tmp_path / "nan.h5"
    with pytest.raises(BadSample, match=f"{path}.*row 25 with non-finite values"):
        _generate(path, make=lambda: _fail_at(25))
    assert not path.exists() and partial_path(path).exists()
    negative = tmp_path / "negative.h5"
    with pytest.raises(BadSample, match="row 0 with values the problem does not admit"):
        _generate(negative, reject=lambda rows: rows[:, 0] > -10)  # refuses everything
    good = _generate(tmp_path / "good.h5")
    with h5py.File(good, "r+") as h5:
        h5["samples"][17, 3] = np.inf
    with pytest.raises(DatasetError, match=r"1 rows with non-finite values \(rows 17\)"):
        load_samples(good, "synthetic", list(FIELDS))
    with pytest.raises(DatasetError, match="does not admit"):
        load_samples(_generate(tmp_path / "other.h5"), "synthetic", list(FIELDS), reject=lambda r: r[:, 0] > 0)


def test_a_journal_removed_during_generation_still_gives_the_complete_file(tmp_path):
    reference = _generate(tmp_path / "reference.h5")
    path = tmp_path / "removed.h5"

    def make():
        def row(index):
            if index == 20:
                partial_path(path).unlink()
            return synthetic_row(index)

        return row

    assert _generate(path, make=make) == path
    assert path.read_bytes() == reference.read_bytes()


def test_a_journal_beside_a_complete_file_is_removed(tmp_path):
    path = _generate(tmp_path / "file.h5")
    partial_path(path).write_bytes(b"left by a kill between the rename and the removal")
    assert _generate(path) == path and not partial_path(path).exists()


def test_a_truncated_final_file_is_one_line_naming_it(tmp_path):
    path = _generate(tmp_path / "file.h5")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError) as info:
        load_samples(path, "synthetic", list(FIELDS))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_data_command_sigkill_resume_equals_uninterrupted(tmp_path):
    """``pidm-fem data darcy`` end to end: killed once mid-generation, resumed, the same bytes as one run."""
    mesh = Path(__file__).resolve().parents[1] / "meshes" / "unit_square_r1.msh"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out, workers):
        return [sys.executable, "-m", "pidm_fem.cli", "data", "darcy", "--mesh", str(mesh), "--n", "400",
                "--out", str(out), "--workers", str(workers)]

    reference = tmp_path / "reference.h5"
    done = subprocess.run(command(reference, 1), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and str(reference) in done.stdout, done.stderr
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(command(path, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not partial_path(path).exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    assert not path.exists()
    again = subprocess.run(command(path, 2), capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert path.read_bytes() == reference.read_bytes()
