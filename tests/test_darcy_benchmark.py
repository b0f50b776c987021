"""Smoke run of the main job (benchmarks/darcy_mesh.py): every output, every metric, every method."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ddpm", "pidm_mean", "pidm_sample", "physics_guided", "cocogen", "pidm_cocogen")


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
    proc = run_benchmark(*common, "--n-samples", "4")
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
    for method, entry in results["methods"].items():
        assert entry["residual"]["mean"] > 0 and entry["residual"]["median"] > 0, method
        assert entry["trivial_residual"]["mean"] > 0, method
        assert entry["state_error"]["mean"] > 0 and len(entry["state_error"]["per_sample"]) == 4, method
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
