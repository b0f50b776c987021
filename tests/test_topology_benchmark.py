"""The topology benchmark (benchmarks/topopt_mesh.py): a smoke run writes every output with every metric."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("compliance_error_mean", "compliance_error_median", "volume_fraction_error_mean",
           "volume_fraction_error_median", "floating_share", "load_disrespect_share", "residual_mean",
           "residual_median", "seconds_per_design")


def test_a_smoke_run_writes_every_output_with_every_metric_for_every_row_and_test_set(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "benchmarks" / "topopt_mesh.py"), "--quick", "--out", str(out),
               "--jobs", "1", "--set", "data.n_train=4", "--set", "data.n_val=1", "--set", "data.n_test=2",
               "--set", "training.steps=2", "--set", "training.batch_size=2", "--set", "training.ema_start=0",
               "--set", "training.checkpoint_every=2", "--set", "model.width=8", "--set", "sampling.ddim_steps=2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report"
    for name in ("results.json", "results.md", "designs.png"):
        assert (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    rows = {"simp", "ddpm", "pidm_mean", "pidm_mean+simp"}
    assert set(results["results"]) == {"in_distribution", "out_of_distribution"}
    for test, entries in results["results"].items():
        assert set(entries) == rows, test
        for name, entry in entries.items():
            assert all(key in entry and entry[key] is not None for key in METRICS), (test, name)
            assert len(entry["per_design"]["compliance_error"]) == 2
        simp = entries["simp"]
        assert simp["compliance_error_mean"] == 0 and simp["simp"]["timed"] == 2
        assert 0 <= simp["simp"]["capped_share"] <= 1
        assert simp["residual_mean"] < 1e-6 * entries["ddpm"]["residual_mean"]  # the data's floor
        assert len(list((report / "fields").glob(f"{test}_*.pvd"))) == len(rows)
    run = results["run"]
    assert run["data"]["samples_per_second"] > 0 and run["wall_seconds"] > 0
    assert "pidm_mean" in proc.stdout and "out-of-distribution" in proc.stdout
