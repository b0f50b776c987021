# pidm_fem on Firedrake's official image. The tag must equal the firedrake pin
# in pyproject.toml and TORCH_VERSION its torch pin (tests/test_docker.py).
FROM firedrakeproject/firedrake-vanilla-default:2026.10.0

# PyPI's Linux torch wheel runs on the CPU; for the smaller CPU-only build pass
# PyTorch's CPU wheel index: --build-arg TORCH_PIP_ARGS="--index-url <index>".
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
ENV OMP_NUM_THREADS=1 \
    PIP_NO_CACHE_DIR=1 \
    MPLBACKEND=Agg

# Runtime libraries of the gmsh Python wheel (the base image's release decides their versions).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglu1-mesa libxcursor1 libxft2 libxinerama1 libxrender1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pidm_fem
COPY pyproject.toml README.md ./
COPY pidm_fem ./pidm_fem
# The pins live in pyproject.toml; Firedrake and its h5py come with the image, so
# only the other dependencies are installed from the pins, then the project itself.
# hadolint ignore=DL3013
RUN pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['test'] \
if r.split('==')[0] not in ('firedrake', 'h5py', 'torch')))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps -e .
COPY meshes ./meshes
COPY benchmarks ./benchmarks
COPY tests ./tests

CMD ["python", "benchmarks/darcy_mesh.py", "--quick", "--out", "/tmp/pidm_fem_demo"]
