# A GPU image of this checkout, for launch/jobset.yaml and any CUDA 12 machine:
#   docker build -t REGISTRY/metaportrait-jax:latest .          # --build-arg ACCEL=tpu: TPU; ACCEL=: CPU only
#   docker run --rm --gpus all REGISTRY/metaportrait-jax:latest  # `doctor`: backend, devices, versions
# A plain Python base is enough: the [cuda12] extra brings CUDA, cuDNN and NCCL as NVIDIA's pip wheels, so only the
# host's NVIDIA driver (mounted by the NVIDIA container toolkit) comes from outside the image. The install is the
# project's own, `make install ACCEL=...` into /app/.venv, pinned by requirements/constraints.txt.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG ACCEL=cuda12
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# make runs the install; nothing else comes from Debian (OpenCV is the headless wheel, ffmpeg ships inside
# imageio-ffmpeg's wheel).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, from the files that name them only, so that a code edit reuses this layer (the CUDA wheels are
# gigabytes). Without the package folders this installs the dependencies and an empty project, which the editable
# install below replaces.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
RUN python -m venv .venv \
    && .venv/bin/pip install -q -c requirements/constraints.txt --upgrade pip setuptools wheel \
    && .venv/bin/pip install -q -c requirements/constraints.txt ".${ACCEL:+[${ACCEL}]}"

COPY . .
RUN make install ACCEL=${ACCEL}

ENV PATH=/app/.venv/bin:${PATH}
ENTRYPOINT ["metaportrait-jax"]
CMD ["doctor"]
