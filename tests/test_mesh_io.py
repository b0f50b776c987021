"""Mesh loading: round trips through meshio formats, markers, and clear errors."""

import subprocess
import sys

import meshio
import numpy as np
import pytest

from pidm_fem.mesh import MeshError, default_mesh_path, load_mesh, structured_grid_mesh

BOUNDARY_IDS = (1, 2, 3, 4)


def _summary(mesh):
    import firedrake as fd

    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    lengths = {i: fd.assemble(fd.Constant(1.0) * fd.ds(i, domain=mesh)) for i in BOUNDARY_IDS}
    return mesh.num_vertices(), mesh.num_cells(), area, lengths


def test_default_mesh_size_and_markers(default_mesh):
    n_vertices, n_cells, area, lengths = _summary(default_mesh)
    assert 1500 <= n_vertices <= 3000
    assert abs(area - 1.0) < 1e-12
    assert all(abs(lengths[i] - 1.0) < 1e-12 for i in BOUNDARY_IDS)
    assert sorted(default_mesh.exterior_facets.unique_markers) == list(BOUNDARY_IDS)


@pytest.mark.parametrize("fmt,suffix", [("vtu", ".vtu"), ("gmsh22", ".msh"), ("xdmf", ".xdmf")])
def test_round_trip_through_meshio(tmp_path, default_mesh, fmt, suffix):
    source = meshio.read(default_mesh_path())
    path = tmp_path / f"square{suffix}"
    if fmt == "gmsh22":
        meshio.write(path, source, file_format=fmt, binary=False)
    else:
        meshio.write(path, source, file_format=fmt)
    reference = _summary(default_mesh)
    loaded = _summary(load_mesh(path))
    assert loaded[:2] == reference[:2]
    assert abs(loaded[2] - reference[2]) < 1e-12
    for i in BOUNDARY_IDS:
        assert abs(loaded[3][i] - reference[3][i]) < 1e-12


def _single_line(err: MeshError, path) -> str:
    message = str(err)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file_error(tmp_path):
    path = tmp_path / "missing.msh"
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    assert "no such mesh file" in _single_line(info.value, path)


def _cube_tetra_mesh():
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
    return meshio.Mesh(points, [("tetra", np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))])


@pytest.mark.parametrize("suffix,fmt", [(".vtu", "vtu"), (".msh", "gmsh22")])
def test_3d_mesh_error(tmp_path, suffix, fmt):
    path = tmp_path / f"cube{suffix}"
    mesh = _cube_tetra_mesh()
    if fmt == "gmsh22":
        mesh.cell_data = {"gmsh:physical": [np.array([1, 1])], "gmsh:geometrical": [np.array([1, 1])]}
        meshio.write(path, mesh, file_format=fmt, binary=False)
    else:
        meshio.write(path, mesh, file_format=fmt)
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    assert "3D mesh" in _single_line(info.value, path)


@pytest.mark.parametrize("name", ["garbage.vtu", "garbage.msh", "garbage.unknownformat"])
def test_unreadable_file_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not a mesh\n" * 3)
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    assert "cannot read" in _single_line(info.value, path)


def test_cli_reports_bad_mesh_in_one_line(tmp_path):
    path = tmp_path / "missing.vtu"
    proc = subprocess.run([sys.executable, "-m", "pidm_fem.cli", "mesh-info", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], proc.stderr


def test_structured_grid_nodes_form_a_64x64_grid():
    import firedrake as fd

    mesh = structured_grid_mesh(64)
    V = fd.FunctionSpace(mesh, "CG", 1)
    coords = fd.Function(fd.VectorFunctionSpace(mesh, "CG", 1)).interpolate(fd.SpatialCoordinate(mesh))
    xy = coords.dat.data_ro
    assert V.dof_count == 64 * 64
    grid = np.linspace(0, 1, 64)
    for axis in range(2):
        assert np.allclose(np.unique(np.round(xy[:, axis], 12)), grid)
