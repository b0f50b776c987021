"""``pidm-fem mesh info`` and ``pidm-fem mesh convert``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def mesh_info(args: argparse.Namespace) -> int:
    """Print a checked mesh's size, area, bounding box, boundary ids with their lengths and cell quality."""
    import firedrake as fd
    import numpy as np

    from pidm_fem.mesh import cell_quality, load_mesh, read_mesh_arrays
    from pidm_fem.mesh.checks import POOR_ANGLE, POOR_ASPECT

    arrays = read_mesh_arrays(args.path)
    mesh = load_mesh(args.path)
    ids = sorted(int(i) for i in mesh.exterior_facets.unique_markers)
    lengths = {i: fd.assemble(fd.Constant(1.0) * fd.ds(i, domain=mesh)) for i in ids}
    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    low, high = arrays.points.min(axis=0), arrays.points.max(axis=0)
    angles, aspect = cell_quality(arrays.points, arrays.cells)
    print(f"{args.path}: {len(arrays.points)} vertices, {len(arrays.cells)} {arrays.cell_type}s, area {area:.6g}")
    print(f"  bounding box: [{low[0]:.6g}, {high[0]:.6g}] x [{low[1]:.6g}, {high[1]:.6g}]")
    for i, length in lengths.items():
        print(f"  boundary id {i}: length {length:.6g}")
    print(f"  cell quality: minimum angle {angles.min():.3g} degrees, largest aspect ratio {aspect.max():.3g}")
    poor = int(np.sum((angles < POOR_ANGLE) | (aspect > POOR_ASPECT)))
    if poor:
        print(f"pidm-fem: warning: {args.path}: {poor} poor cells (an angle below {POOR_ANGLE:g} degrees or an "
              f"aspect ratio above {POOR_ASPECT:g})", file=sys.stderr)
    return 0


def mesh_convert(args: argparse.Namespace) -> int:
    """Write a checked mesh in another format meshio writes, its boundary tags kept."""
    from pidm_fem.mesh.convert import convert_mesh

    convert_mesh(args.source, args.target)
    print(f"{args.source} -> {args.target}")
    return 0


def add_mesh_commands(commands) -> None:
    """The ``mesh`` command and its subcommands."""
    mesh = commands.add_parser("mesh", help="check, describe and convert mesh files")
    sub = mesh.add_subparsers(dest="mesh_command", required=True)
    info = sub.add_parser("info", help="check a mesh and print its size, boundary ids and cell quality")
    info.add_argument("path", type=Path, help="mesh file (.msh, or any format meshio reads: .vtu, .xdmf, ...)")
    info.set_defaults(run=mesh_info)
    convert = sub.add_parser("convert", help="convert a mesh between formats, boundary tags kept")
    convert.add_argument("source", type=Path, help="mesh file to read (checked first)")
    convert.add_argument("target", type=Path,
                         help="file to write; its suffix names the format (.msh as gmsh 2.2, .vtu, .xdmf, ...)")
    convert.set_defaults(run=mesh_convert)
