"""Tests of the evaluation metrics (pure PyTorch and numpy).

The residual is a small torch stand-in: a fixed linear operator ``A p + B K - f``
on (B, 2, n) samples. Data are smooth random fields on n nodes of a 1-D "mesh"
with unequal node weights.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pidm_fem.evaluation import (
    abs_residual_by_region,
    energy_distance,
    evaluate_methods,
    field_statistics,
    mismatched_pairs,
    markdown_table,
    mean_abs_residual,
    relative_state_error,
    residual_summary,
    sliced_wasserstein,
    zero_channel,
)

N = 24  # nodes


def make_fields(batch: int, seed: int) -> torch.Tensor:
    """Smooth random (p, K) fields, (batch, 2, N), float64: p of small spread, K = exp(G) of large."""
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(0, 1, N, dtype=torch.float64)
    modes = torch.stack([torch.sin(math.pi * k * s) / k for k in range(1, 6)])  # (5, N)
    p = 0.05 * torch.randn(batch, 5, generator=g, dtype=torch.float64) @ modes
    K = torch.exp(torch.randn(batch, 5, generator=g, dtype=torch.float64) @ modes)
    return torch.stack([p, K], dim=1)


@pytest.fixture(scope="module")
def linear_residual():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(N, N, generator=g, dtype=torch.float64)
    B = 0.1 * torch.randn(N, N, generator=g, dtype=torch.float64)
    f = torch.randn(N, generator=g, dtype=torch.float64)

    def residual(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] @ A.T + x[:, 1] @ B.T - f

    return residual


@pytest.fixture(scope="module")
def weights() -> torch.Tensor:
    return torch.linspace(0.5, 2.0, N, dtype=torch.float64)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return {"test": make_fields(64, seed=10), "train": make_fields(128, seed=11)}


@pytest.fixture(scope="module")
def results(data, linear_residual, weights) -> dict:
    test = data["test"]
    generated = {"ddpm": 0.5 * test, "copy": test.clone(), "numpy": test.numpy()}
    return evaluate_methods(generated, test, data["train"], linear_residual, weights, channel_names=["p", "K"])


def test_mean_abs_residual_is_the_weighted_node_mean(linear_residual, weights, data):
    x = data["test"][:10]
    r = linear_residual(x).numpy()
    w = weights.numpy()
    expected = (np.abs(r) * w).sum(axis=1) / w.sum()
    np.testing.assert_allclose(mean_abs_residual(linear_residual, x, weights, batch_size=3), expected, rtol=1e-14)
    np.testing.assert_allclose(mean_abs_residual(linear_residual, x), np.abs(r).mean(axis=1), rtol=1e-14)
    summary = residual_summary(expected)
    assert summary["mean"] == pytest.approx(expected.mean())
    assert summary["median"] == pytest.approx(np.median(expected))
    assert summary["per_sample"] == pytest.approx(expected.tolist()) and summary["n_samples"] == 10


def test_residual_shares_of_a_partition_add_up_to_the_mean(linear_residual, weights, data):
    x = data["test"][:10]
    first = np.arange(N) < N // 3
    total, shares = abs_residual_by_region(
        linear_residual, x, {"first": first, "rest": ~first, "all": np.ones(N, bool)}, weights, batch_size=4
    )
    mean = mean_abs_residual(linear_residual, x, weights)
    np.testing.assert_allclose(total, mean, rtol=1e-14)
    np.testing.assert_allclose(shares["first"] + shares["rest"], mean, rtol=1e-13)
    np.testing.assert_allclose(shares["all"], mean, rtol=1e-14)
    w = weights.numpy()
    expected = (np.abs(linear_residual(x).numpy()) * w * first).sum(axis=1) / w.sum()
    np.testing.assert_allclose(shares["first"], expected, rtol=1e-14)
    with pytest.raises(ValueError, match="region 'bad': needs a boolean mask of 24 nodes"):
        abs_residual_by_region(linear_residual, x, {"bad": np.ones(N)})


def test_evaluate_methods_splits_every_entry_by_region(data, linear_residual, weights):
    test = data["test"]
    first = np.arange(N) < N // 2
    results = evaluate_methods({"ddpm": 0.5 * test}, test, data["train"], linear_residual, weights,
                               regions={"first": first, "rest": ~first})
    for entry in (results["data"], results["trivial"], results["methods"]["ddpm"]):
        split = entry["residual_by_region"]
        assert split["first"]["mean"] + split["rest"]["mean"] == pytest.approx(entry["residual"]["mean"], rel=1e-13)
        assert split["first"]["mean"] > 0 and split["rest"]["mean"] > 0


def test_mean_abs_residual_rejects_a_residual_of_the_wrong_shape(data):
    with pytest.raises(ValueError, match="one value per node"):
        mean_abs_residual(lambda x: x.sum(dim=2), data["test"])


def test_zero_channel_returns_a_zeroed_copy(data):
    x = data["test"][:4]
    before = x.clone()
    trivial = zero_channel(x, 0)
    assert torch.equal(trivial[:, 0], torch.zeros_like(x[:, 0])) and torch.equal(trivial[:, 1], x[:, 1])
    assert torch.equal(x, before)
    with pytest.raises(ValueError, match="out of range"):
        zero_channel(x, 2)


def test_field_statistics_match_weighted_numpy(data, weights):
    x, w = data["test"].numpy(), weights.numpy()
    stats = field_statistics(data["test"], weights)
    for c in range(2):
        values = x[:, c]
        mean = np.average(values, axis=1, weights=w).mean()
        std = np.sqrt(np.average((values - mean) ** 2, axis=1, weights=w).mean())
        sample_means = np.average(values, axis=1, weights=w)[:, None]
        within = np.sqrt(np.average((values - sample_means) ** 2, axis=1, weights=w)).mean()
        assert float(stats["mean"][c]) == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert float(stats["std"][c]) == pytest.approx(std, rel=1e-12)
        assert float(stats["within_std"][c]) == pytest.approx(within, rel=1e-12)


def test_test_set_as_generated_reports_the_data_floor_and_zero_distance(results):
    copy, data = results["methods"]["copy"], results["data"]
    assert copy["residual"] == data["residual"]
    assert copy["trivial_residual"] == data["trivial_residual"] == results["trivial"]["residual"]
    assert copy["ratios"]["residual_to_data"] == 1.0
    assert copy["fidelity"]["energy_distance"] == 0.0
    assert copy["fidelity"]["sliced_wasserstein"] == 0.0
    for field in copy["fidelity"]["fields"].values():
        assert field["within_std_ratio"] == pytest.approx(1.0, rel=1e-14)
        assert field["mean_error"] == pytest.approx(0.0, abs=1e-12)
    assert results["methods"]["numpy"]["residual"] == data["residual"]


def test_test_set_scaled_by_half_reports_a_large_distance_and_half_the_spread(results):
    half, data = results["methods"]["ddpm"], results["data"]
    for name in ("p", "K"):
        assert half["ratios"]["within_std_to_test"][name] == pytest.approx(0.5, rel=1e-12)
        assert half["fidelity"]["fields"][name]["std_rel_error"] == pytest.approx(-0.5, rel=1e-12)
    for distance in ("energy_distance", "sliced_wasserstein"):
        floor = data["fidelity"][distance]  # train against test: same distribution, finite samples
        assert 0 < floor < 0.5 * half["fidelity"][distance]
        assert half["ratios"][f"{distance}_to_floor"] > 2
        assert half["ratios"][f"{distance}_to_baseline"] == 1.0
        assert results["methods"]["copy"]["ratios"][f"{distance}_to_baseline"] == 0.0


def test_trivial_field_entry_and_ratios(results, data, linear_residual, weights):
    trivial = results["trivial"]
    expected = mean_abs_residual(linear_residual, zero_channel(data["test"], 0), weights)
    assert trivial["residual"]["mean"] == pytest.approx(expected.mean(), rel=1e-14)
    assert trivial["ratios"]["within_std_to_test"]["p"] == 0.0
    half = results["methods"]["ddpm"]
    assert half["ratios"]["residual_to_trivial"] == pytest.approx(
        half["residual"]["mean"] / half["trivial_residual"]["mean"], rel=1e-14
    )
    assert results["methods"]["copy"]["ratios"]["residual_to_baseline"] == pytest.approx(
        results["data"]["residual"]["mean"] / half["residual"]["mean"], rel=1e-14
    )


@pytest.fixture(scope="module")
def linear_problem():
    """A solvable stand-in: residual ``A p + B K - f`` and its state solver ``p = A^-1 (f - B K)``."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(N, N, generator=g, dtype=torch.float64) + N * torch.eye(N, dtype=torch.float64)
    B = torch.randn(N, N, generator=g, dtype=torch.float64)
    f = torch.randn(N, generator=g, dtype=torch.float64)

    def residual(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] @ A.T + x[:, 1] @ B.T - f

    def solve(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(A, (f - x[:, 1] @ B.T).T).T

    return residual, solve


def test_state_error_is_zero_for_solutions_one_for_zero_and_measures_a_scaling(data, weights, linear_problem):
    residual, solve = linear_problem
    K = data["test"][:, 1]
    solved = torch.stack([solve(data["test"]), K], dim=1)
    np.testing.assert_allclose(relative_state_error(solve, solved, 0, weights), 0.0, atol=1e-13)
    np.testing.assert_allclose(relative_state_error(solve, zero_channel(solved, 0), 0, weights), 1.0, rtol=1e-14)
    scaled = solved * torch.tensor([1.1, 1.0], dtype=torch.float64)[:, None]
    np.testing.assert_allclose(relative_state_error(solve, scaled, 0, weights, batch_size=5), 0.1, rtol=1e-12)
    results = evaluate_methods(
        {"ddpm": scaled}, solved, data["train"], residual, weights, channel_names=["p", "K"], state_solver=solve
    )
    assert results["data"]["state_error"]["mean"] < 1e-13
    mismatched = torch.stack([solved[:, 0], solved[:, 1].roll(1, dims=0)], dim=1)
    expected = relative_state_error(solve, mismatched, 0, weights)
    assert results["data"]["mismatched_state_error"]["per_sample"] == pytest.approx(expected.tolist(), rel=1e-14)
    assert min(expected) > 0.01
    assert results["trivial"]["state_error"]["mean"] == pytest.approx(1.0, rel=1e-14)
    assert results["methods"]["ddpm"]["state_error"]["median"] == pytest.approx(0.1, rel=1e-12)
    header, _, data_row, trivial_row, ddpm_row = markdown_table(results).strip().splitlines()
    assert "p rel. error to solve" in header
    assert trivial_row.split("|")[6].strip() == "1" and ddpm_row.split("|")[6].strip() == "0.1"


def test_state_error_rejects_a_solver_of_the_wrong_shape_or_a_zero_state(data):
    with pytest.raises(ValueError, match="one value per node"):
        relative_state_error(lambda x: x[:, 0, :-1], data["test"])
    with pytest.raises(ValueError, match="identically zero"):
        relative_state_error(lambda x: torch.zeros_like(x[:, 0]), data["test"])
    with pytest.raises(ValueError, match="state channel 2 is out of range"):
        relative_state_error(lambda x: x[:, 0], data["test"], state_channel=2)


def test_results_are_strict_json(results):
    text = json.dumps(results, allow_nan=False)
    assert json.loads(text)["settings"]["channel_names"] == ["p", "K"]


def test_energy_distance_is_near_zero_for_one_gaussian_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = torch.randn(300, 5, generator=g, dtype=torch.float64)
    shift = torch.zeros(5, dtype=torch.float64)
    shift[0] = 1.0
    values = [energy_distance(x, y + a * shift) for a in (0.0, 0.5, 1.0, 2.0)]
    assert energy_distance(x, x) == 0.0
    assert values[0] < 0.03
    assert values[0] < values[1] < values[2] < values[3]
    assert values[2] > 10 * values[0]


def test_sliced_wasserstein_is_the_exact_one_dimensional_w2():
    # unequal sizes, by hand: quantile functions of {0, 1} and {0, 1, 2} differ by 1 on (1/3, 1/2) and (2/3, 1)
    x = torch.tensor([[1.0], [0.0]])
    y = torch.tensor([[2.0], [0.0], [1.0]])
    assert sliced_wasserstein(x, y, n_projections=4) == pytest.approx(math.sqrt(0.5), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    b = 1.0 + 2.0 * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    exact_empirical = ((a.flatten().sort().values - b.flatten().sort().values) ** 2).mean().sqrt()
    value = sliced_wasserstein(a, b, n_projections=8, seed=3)
    assert value == pytest.approx(float(exact_empirical), rel=1e-10)
    # W2 between N(0, 1) and N(1, 2^2) is sqrt((1 - 0)^2 + (2 - 1)^2)
    assert value == pytest.approx(math.sqrt(2.0), rel=0.03)


def test_sliced_wasserstein_is_seeded():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g), torch.randn(40, 6, generator=g) + 0.3
    assert sliced_wasserstein(x, y, seed=5) == sliced_wasserstein(x, y, seed=5)
    assert sliced_wasserstein(x, y, seed=5) != sliced_wasserstein(x, y, seed=6)


def test_markdown_table_has_the_references_and_one_row_per_method(results):
    lines = markdown_table(results).strip().splitlines()
    assert lines[0].count("|") == lines[2].count("|")
    rows = lines[2:]
    assert len(rows) == 2 + len(results["methods"])
    assert rows[0].startswith("| data (test") and rows[1].startswith("| trivial p = 0")
    for name, row in zip(results["methods"], rows[2:]):
        assert row.startswith(f"| {name} |")
    assert "r / ddpm" in lines[0] and "K within-std / test" in lines[0] and "error to solve" not in lines[0]
    assert results["methods"]["ddpm"]["state_error"] is None


def test_without_the_baseline_its_ratios_are_none(data, linear_residual):
    results = evaluate_methods({"pidm": data["test"]}, data["test"], data["train"], linear_residual)
    assert results["settings"]["baseline"] is None
    assert results["methods"]["pidm"]["ratios"]["residual_to_baseline"] is None
    assert "| pidm |" in markdown_table(results) and "–" in markdown_table(results)


def test_mismatched_inputs_are_one_line_errors(data, linear_residual):
    with pytest.raises(ValueError, match="differ in fields or nodes"):
        evaluate_methods({"ddpm": data["test"][:, :, :-1]}, data["test"], data["train"], linear_residual)
    with pytest.raises(ValueError, match=r"node weights must have shape \(24,\)"):
        mean_abs_residual(linear_residual, data["test"], torch.ones(3))
    with pytest.raises(ValueError, match="shape \\(B, C, n\\)"):
        evaluate_methods({}, data["test"][0], data["train"], linear_residual)


def test_the_evaluation_package_does_not_import_firedrake():
    code = "import sys, pidm_fem.evaluation; assert 'firedrake' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mismatched_pairs_keep_each_state_and_shift_the_coefficients():
    x = torch.arange(24, dtype=torch.float64).reshape(3, 2, 4)
    original = x.clone()
    paired = mismatched_pairs(x, 0)
    assert torch.equal(x, original)
    assert torch.equal(paired[:, 0], x[:, 0])
    assert torch.equal(paired[:, 1], x[[2, 0, 1], 1])
    with pytest.raises(ValueError, match="out of range"):
        mismatched_pairs(x, 2)
