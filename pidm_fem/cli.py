"""The ``pidm-fem`` command line."""

from __future__ import annotations

import argparse
import sys


def _mesh_info(args: argparse.Namespace) -> int:
    import firedrake as fd

    from .mesh import load_mesh

    mesh = load_mesh(args.path)
    ids = sorted(int(i) for i in mesh.exterior_facets.unique_markers)
    lengths = {i: fd.assemble(fd.Constant(1.0) * fd.ds(i, domain=mesh)) for i in ids}
    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    print(f"{args.path}: {mesh.num_vertices()} vertices, {mesh.num_cells()} triangles, area {area:.6g}")
    for i, length in lengths.items():
        print(f"  boundary id {i}: length {length:.6g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pidm-fem``."""
    parser = argparse.ArgumentParser(prog="pidm-fem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("mesh-info", help="load a mesh and print its size and boundary ids")
    info.add_argument("path", help="mesh file (.msh, or any format meshio reads)")
    info.set_defaults(run=_mesh_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pidm-fem``; errors in the input are one line on stderr and exit code 2."""
    from .mesh import MeshError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MeshError as err:
        print(f"pidm-fem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
