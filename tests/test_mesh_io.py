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


def _grid(n=4, z=None):
    """A triangulated unit square of n x n squares: points (with a z column when given) and triangles."""
    x, y = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1))
    points = np.column_stack([x.ravel(), y.ravel()])
    if z is not None:
        points = np.column_stack([points, np.broadcast_to(z, len(points))])
    index = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel(), index[1:, :-1].ravel()
    triangles = np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])
    quads = np.column_stack([a, b, c, d])
    return points, triangles, quads


def _write(path, points, cells):
    if points.shape[1] == 2:
        points = np.column_stack([points, np.zeros(len(points))])
    meshio.write(path, meshio.Mesh(points, cells))
    return path


def _fault(tmp_path, kind):
    """A mesh file with one fault, and the words its error must contain."""
    points, triangles, quads = _grid()
    path = tmp_path / f"{kind}.vtu"
    if kind == "missing":
        return tmp_path / "missing.vtu", "no such mesh file"
    if kind == "unknown format":
        path = tmp_path / "mesh.xyz"
        path.write_text("1 2 3\n")
        return path, "unknown mesh format"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty file"
    if kind == "garbage":
        path.write_text("this is not a mesh\n" * 3)
        return path, "cannot read"
    if kind == "garbage msh":
        path = tmp_path / "garbage.msh"
        path.write_text("$MeshFormat\nnonsense\n")
        return path, "cannot read"
    if kind == "varying z":
        points = np.column_stack([points, points[:, 0] * 0.1])
        return _write(path, points, [("triangle", triangles)]), "not planar"
    if kind == "no cells":
        return _write(path, points, []), "no cells"
    if kind == "boundary only":
        return _write(path, points, [("line", np.array([[0, 1], [1, 2]]))]), "boundary cells only"
    if kind == "mixed cells":
        return _write(path, points, [("triangle", triangles[:4]), ("quad", quads[4:])]), "mixed cell types"
    if kind == "unsupported cells":
        six = np.column_stack([triangles[:, :3], triangles[:, :3]])
        return _write(path, points, [("triangle6", six)]), "unsupported cell type"
    if kind == "3D cells":
        cube = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
        return _write(path, cube, [("tetra", np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))]), "3D cells"
    if kind == "non-finite":
        points[7, 1] = np.nan
        return _write(path, points, [("triangle", triangles)]), "non-finite coordinates"
    if kind == "degenerate":
        triangles[0] = [0, 1, 2]  # three vertices of the bottom edge
        return _write(path, points, [("triangle", triangles)]), "degenerate (zero-area)"
    if kind == "inverted":
        points[6] = [0.6, 0.6]  # an interior vertex moved across its neighbours: its cells fold over them
        return _write(path, points, [("triangle", triangles)]), "inverted cells"
    if kind == "duplicate vertex":
        points = np.vstack([points, points[6]])
        triangles[triangles == 6] = np.where(np.arange((triangles == 6).sum()) % 2, 6, len(points) - 1)
        return _write(path, points, [("triangle", triangles)]), "duplicate vertices"
    if kind == "torn":
        corners = points[triangles].reshape(-1, 2)
        return _write(path, corners, [("triangle", np.arange(len(corners)).reshape(-1, 3))]), "torn mesh"
    raise AssertionError(kind)


FAULTS = ["missing", "unknown format", "empty", "garbage", "garbage msh", "varying z", "no cells", "boundary only",
          "mixed cells", "unsupported cells", "3D cells", "non-finite", "degenerate", "inverted", "duplicate vertex",
          "torn"]


@pytest.mark.parametrize("kind", FAULTS)
def test_each_mesh_fault_is_one_line_naming_the_file(tmp_path, capsys, kind):
    from pidm_fem.cli import main

    path, words = _fault(tmp_path, kind)
    with pytest.raises(MeshError) as info:
        load_mesh(path)
    assert words in _single_line(info.value, path)
    before = sorted(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["mesh", "info", str(path)]) == 2
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and str(path) in lines[0], out.err
    assert "Traceback" not in out.err and sorted(tmp_path.iterdir()) == before  # nothing written


def test_constant_z_is_dropped_and_unused_vertices_are_dropped_with_a_warning(tmp_path, caplog):
    import firedrake as fd

    points, triangles, _ = _grid(z=0.25)
    points = np.vstack([points, [[5.0, 5.0, 0.25]]])  # a vertex no cell uses
    path = _write(tmp_path / "lifted.vtu", points, [("triangle", triangles)])
    with caplog.at_level("WARNING"):
        mesh = load_mesh(path)
    assert mesh.geometric_dimension == 2 and mesh.num_vertices() == 25
    assert abs(fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh)) - 1.0) < 1e-12
    assert any("1 vertices that no cell uses" in record.message for record in caplog.records)


def test_quadrilateral_mesh_loads_and_mesh_info_reports_quality(tmp_path, capsys):
    import firedrake as fd

    from pidm_fem.cli import main

    points, _, quads = _grid(n=3)
    path = _write(tmp_path / "quads.vtu", points, [("quad", quads)])
    mesh = load_mesh(path)
    assert mesh.ufl_cell().cellname == "quadrilateral" and mesh.num_cells() == 9
    assert abs(fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh)) - 1.0) < 1e-12
    assert main(["mesh", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "9 quadrilaterals" in out and "minimum angle 90 degrees, largest aspect ratio 1" in out


def test_cells_of_either_vertex_order_are_not_inverted(tmp_path):
    points, triangles, _ = _grid()
    triangles[::2] = triangles[::2, ::-1]  # half the cells clockwise, as Firedrake's own numbering has them
    assert load_mesh(_write(tmp_path / "mixed_order.vtu", points, [("triangle", triangles)])).num_cells() == 32


def test_cell_quality_of_known_triangles():
    from pidm_fem.mesh import cell_quality

    points = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 1]])
    angles, aspect = cell_quality(points, np.array([[0, 1, 2], [0, 1, 3]]))
    assert np.allclose(angles, [60, 45]) and abs(aspect[0] - 1) < 1e-12 and aspect[1] > 1


def test_too_few_nodes_for_the_kl_modes_is_a_mesh_error(tmp_path):
    from pidm_fem.physics.problems import build_problem

    points, triangles, _ = _grid(n=4)
    path = _write(tmp_path / "coarse.vtu", points, [("triangle", triangles)])
    with pytest.raises(MeshError) as info:
        build_problem("darcy", str(path))
    assert "too few for the Darcy permeability's 64 KL modes" in _single_line(info.value, path)


def test_cli_reports_bad_mesh_in_one_line(tmp_path):
    path = tmp_path / "missing.vtu"
    proc = subprocess.run([sys.executable, "-m", "pidm_fem.cli", "mesh", "info", str(path)],
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
