#!/usr/bin/env bash
# Install the pidm_fem environment into the project-local virtual environment .venv.
#
# Phases (each prints what it does and how long it took):
#   1. Debian/Ubuntu packages for the PETSc build (installed with apt-get when
#      root or passwordless sudo is available; otherwise a one-line error names
#      the first missing package).
#   2. PETSc from its PyPI source package, configured against the system
#      libraries (configure downloads nothing), built once into a stable
#      machine-level prefix keyed by the pinned versions and the configure
#      options, and reused by every checkout and every later run.
#   3. A wheelhouse next to that PETSc with petsc4py, h5py (MPI) and firedrake
#      built against it, so that a fresh checkout installs them in seconds.
#   4. The project venv: the wheelhouse, torch (CPU), the Python dependencies
#      and the project itself in editable mode.
#   5. A Poisson smoke test with Firedrake.
#
# Versions come from pyproject.toml (the single source of truth).
# Environment: PIDM_FEM_STACK_ROOT (where PETSc and the wheelhouse live),
# PYTHON (the interpreter for the venv), VENV (default .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
export OMP_NUM_THREADS=1
# nproc would honour OMP_NUM_THREADS=1: count the processors directly.
export MAKEFLAGS="${MAKEFLAGS:--j$(getconf _NPROCESSORS_ONLN)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() { echo "install.sh: error: $*" >&2; exit 1; }
now() { date +%s; }
T_ALL=$(now)
phase_start() { PHASE_NAME="$1"; PHASE_T=$(now); echo "==> $1"; }
phase_end() { echo "    $PHASE_NAME: done in $(( $(now) - PHASE_T )) s${1:+ ($1)}"; }

# run_logged LOG CMD...: run a long command with its output in LOG, printing a
# heartbeat with the elapsed time and the last log line every 20 s.
run_logged() {
    local log="$1"; shift
    "$@" >"$log" 2>&1 &
    local pid=$! t0; t0=$(now)
    while kill -0 "$pid" 2>/dev/null; do
        sleep 20
        if kill -0 "$pid" 2>/dev/null; then
            printf '    ... %4d s  %s\n' "$(( $(now) - t0 ))" \
                "$(grep -v -E "^[[:space:]=*-]*$" "$log" | tail -n 1 | tr -d "\r" | cut -c1-110)"
        fi
    done
    if ! wait "$pid"; then
        tail -n 40 "$log" >&2
        die "command failed: $* (full log: $log)"
    fi
}

# --- versions from pyproject.toml ------------------------------------------
command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' on PATH"
eval "$("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib, re
data = tomllib.load(open(sys.argv[1], "rb"))
pins = {}
for req in data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", req)
    if m:
        pins[m.group(1)] = m.group(2)
pins.update(data["tool"]["pidm-fem"]["stack"])
for name, version in pins.items():
    print(f"PIN_{name.upper().replace('-', '_').replace('.', '_')}={version}")
EOF
)"
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
[[ "$PYVER" == 3.1[1-9]* ]] || die "Python >= 3.11 is needed, '$PYTHON' is $PYVER"

# --- 1. system packages ----------------------------------------------------
phase_start "system packages"
SYSTEM_PACKAGES=(
    build-essential gfortran bison flex pkg-config cmake ninja-build
    libopenmpi-dev openmpi-bin libhdf5-openmpi-dev libopenblas-dev
    libmumps-ptscotch-dev libscalapack-openmpi-dev libptscotch-dev libmetis-dev
    libsuitesparse-dev libhwloc-dev zlib1g-dev
    libglu1-mesa libxcursor1 libxft2 libxinerama1 libxrender1
)
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script supports Debian 12 and Ubuntu 24.04"
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    if [[ $EUID -eq 0 ]]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
        die "missing system package ${missing[0]} (and ${#missing[@]} in all); run as root or install: ${missing[*]}"
    fi
    echo "    installing ${#missing[@]} packages: ${missing[*]}"
    run_logged /tmp/pidm-fem-apt.log "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        bash -c 'apt-get update && apt-get install -y --no-install-recommends "$@"' _ "${missing[@]}" \
        || true
    for pkg in "${missing[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || die "missing system package $pkg and apt-get could not install it (log: /tmp/pidm-fem-apt.log)"
    done
fi
phase_end "${#missing[@]} installed"

MULTIARCH="$(gcc -print-multiarch)"
HDF5_DIR="/usr/lib/$MULTIARCH/hdf5/openmpi"
[[ -f "$HDF5_DIR/libhdf5.so" ]] || die "missing system package libhdf5-openmpi-dev ($HDF5_DIR/libhdf5.so not found)"
PETSC_CONFIGURE_OPTIONS="--with-c2html=0 --with-debugging=0 --with-fortran-bindings=0 \
--with-shared-libraries=1 --with-strict-petscerrorcode \
--COPTFLAGS=-O2 --CXXOPTFLAGS=-O2 --FOPTFLAGS=-O2 \
--with-hdf5-include=/usr/include/hdf5/openmpi \
--with-hdf5-lib=[$HDF5_DIR/libhdf5.so,$HDF5_DIR/libhdf5_hl.so] \
--with-metis --with-mumps --with-ptscotch --with-ptscotch-include=/usr/include/scotch \
--with-ptscotch-lib=[-lptesmumps,-lptscotch,-lptscotcherr,-lesmumps,-lscotch,-lscotcherr] \
--with-scalapack-lib=-lscalapack-openmpi --with-suitesparse --with-zlib --with-hwloc --with-bison"
export PETSC_CONFIGURE_OPTIONS

# --- stable machine-level location for PETSc and the wheelhouse ------------
if [[ -z "${PIDM_FEM_STACK_ROOT:-}" ]]; then
    if [[ -w /opt ]]; then PIDM_FEM_STACK_ROOT=/opt/pidm-fem; else PIDM_FEM_STACK_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/pidm-fem"; fi
fi
STACK_KEY="$(printf '%s\n' "$PYVER" "$PIN_PETSC" "$PIN_PETSC4PY" "$PIN_MPI4PY" "$PIN_H5PY" \
    "$PIN_FIREDRAKE" "$PETSC_CONFIGURE_OPTIONS" "$MULTIARCH" | sha256sum | cut -c1-10)"
STACK="$PIDM_FEM_STACK_ROOT/stack-py$PYVER-petsc$PIN_PETSC-$STACK_KEY"
mkdir -p "$PIDM_FEM_STACK_ROOT"
export PETSC_DIR="$STACK/petsc/petsc" PETSC_ARCH=""
WHEELS="$STACK/wheels"
echo "    stack: $STACK"

# A build venv next to the stack holds the build tools, so that the project
# venv never matters to the stack and the stack never depends on a checkout.
BUILD_VENV="$STACK/build-venv"
BPY="$BUILD_VENV/bin/python"

# --- 2. PETSc ---------------------------------------------------------------
phase_start "PETSc $PIN_PETSC"
if [[ -f "$STACK/petsc.done" && -f "$PETSC_DIR/lib/libpetsc.so" ]]; then
    phase_end "reused"
else
    [[ -x "$BPY" ]] || "$PYTHON" -m venv "$BUILD_VENV"
    "$BPY" -m pip install -q --upgrade pip setuptools wheel
    rm -rf "$STACK/petsc.partial"
    echo "    building PETSc from source (about 10 min on 2 cores); log: $STACK/petsc-build.log"
    run_logged "$STACK/petsc-build.log" "$BPY" -m pip install -v --no-cache-dir \
        --target "$STACK/petsc.partial" "petsc==$PIN_PETSC"
    # The PETSc PyPI package relocates itself; check before publishing it.
    [[ -f "$STACK/petsc.partial/petsc/lib/libpetsc.so" ]] || die "PETSc build produced no libpetsc.so (log: $STACK/petsc-build.log)"
    rm -rf "$STACK/petsc" && mv "$STACK/petsc.partial" "$STACK/petsc"
    touch "$STACK/petsc.done"
    phase_end "built"
fi

# --- 3. wheelhouse built against that PETSc --------------------------------
phase_start "wheelhouse (petsc4py $PIN_PETSC4PY, h5py $PIN_H5PY, firedrake $PIN_FIREDRAKE)"
have_wheel() { compgen -G "$WHEELS/$1-$2-*.whl" >/dev/null; }
if have_wheel petsc4py "$PIN_PETSC4PY" && have_wheel h5py "$PIN_H5PY" && have_wheel firedrake "$PIN_FIREDRAKE"; then
    phase_end "reused"
else
    [[ -x "$BPY" ]] || "$PYTHON" -m venv "$BUILD_VENV"
    mkdir -p "$WHEELS"
    # Firedrake's build requirements (its pyproject.toml), installed here because the
    # wheels are built without isolation, against this PETSc and petsc4py.
    run_logged "$STACK/build-tools.log" "$BPY" -m pip install --upgrade pip "setuptools>=77.0.3" wheel \
        "Cython>=3.0" numpy pkgconfig pybind11 "mpi4py==$PIN_MPI4PY" "firedrake-rtree>=2026.3.0" \
        "libsupermesh>=2026.3" petsctools "rtree>=1.2"
    if ! have_wheel petsc4py "$PIN_PETSC4PY"; then
        echo "    petsc4py (about 8 min, one core); log: $STACK/petsc4py-build.log"
        run_logged "$STACK/petsc4py-build.log" "$BPY" -m pip wheel --no-cache-dir --no-deps \
            --no-build-isolation -w "$WHEELS" "petsc4py==$PIN_PETSC4PY"
    fi
    run_logged "$STACK/petsc4py-install.log" "$BPY" -m pip install --no-index --find-links "$WHEELS" "petsc4py==$PIN_PETSC4PY"
    if ! have_wheel h5py "$PIN_H5PY"; then
        echo "    h5py against MPI HDF5 (about 4 min); log: $STACK/h5py-build.log"
        HDF5_MPI=ON CC=mpicc HDF5_DIR="$HDF5_DIR" run_logged "$STACK/h5py-build.log" "$BPY" -m pip wheel \
            --no-cache-dir --no-deps --no-build-isolation --no-binary h5py -w "$WHEELS" "h5py==$PIN_H5PY"
    fi
    if ! have_wheel firedrake "$PIN_FIREDRAKE"; then
        echo "    firedrake (about 3 min); log: $STACK/firedrake-build.log"
        run_logged "$STACK/firedrake-build.log" "$BPY" -m pip wheel --no-cache-dir --no-deps \
            --no-build-isolation -w "$WHEELS" "firedrake==$PIN_FIREDRAKE"
    fi
    phase_end "built"
fi

# --- 4. project venv --------------------------------------------------------
STAMP="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/install.sh" | sha256sum | cut -c1-16)-$STACK_KEY"
phase_start "project venv $VENV"
VPY="$VENV/bin/python"
if [[ -f "$VENV/.pidm-fem-stamp" && "$(cat "$VENV/.pidm-fem-stamp")" == "$STAMP" ]] \
    && "$VPY" -c "import pidm_fem, os, sys; sys.exit(not os.path.samefile(os.path.dirname(pidm_fem.__path__[0]), '$ROOT'))" 2>/dev/null; then
    phase_end "up to date"
else
    [[ -x "$VPY" ]] || "$PYTHON" -m venv "$VENV"
    rm -f "$VENV/.pidm-fem-stamp"
    run_logged "$STACK/venv-pip.log" "$VPY" -m pip install --upgrade pip setuptools wheel
    run_logged "$STACK/venv-stack.log" "$VPY" -m pip install --find-links "$WHEELS" \
        "mpi4py==$PIN_MPI4PY" "petsc4py==$PIN_PETSC4PY" "h5py==$PIN_H5PY" "firedrake==$PIN_FIREDRAKE"
    run_logged "$STACK/venv-project.log" "$VPY" -m pip install --find-links "$WHEELS" \
        "torch==$PIN_TORCH" -e "$ROOT[test]"
    echo "$STAMP" >"$VENV/.pidm-fem-stamp"
    phase_end "installed"
fi

# --- 5. smoke test ----------------------------------------------------------
phase_start "smoke test (Poisson on a unit square, P1, two meshes)"
"$VPY" - <<'EOF'
import math

import pidm_fem  # noqa: F401  (first: it silences the known PETSc patch-version warning)
import firedrake as fd
errors = []
for n in (8, 16):
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    exact = fd.sin(fd.pi * x) * fd.sin(fd.pi * y)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    uh = fd.Function(V)
    fd.solve(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx == 2 * fd.pi**2 * exact * v * fd.dx(degree=4), uh,
             bcs=fd.DirichletBC(V, 0, "on_boundary"))
    errors.append(math.sqrt(fd.assemble((uh - exact) ** 2 * fd.dx(degree=6))))
rate = math.log2(errors[0] / errors[1])
assert 1.8 < rate < 2.2, f"smoke test: L2 convergence rate {rate:.2f}, expected 2"
import torch
print(f"    Firedrake Poisson L2 errors {errors[0]:.2e} -> {errors[1]:.2e} (rate {rate:.2f}); torch {torch.__version__}")
EOF
phase_end
echo "==> environment ready in $(( $(now) - T_ALL )) s: $VENV"
