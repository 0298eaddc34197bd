# EyeNet on Ray's official image: one image for the Ray head, the Ray workers and the MLflow server
# (deploy/kuberay/). VARIANT picks the base and the torch build:
#
#   docker build -t registry.example.com/eyenet:0.1.0-cpu .                         # CPU torch
#   docker build --build-arg VARIANT=gpu -t registry.example.com/eyenet:0.1.0-gpu .  # CUDA torch
#
# RAY_VERSION and TORCH_VERSION must match the pins in pyproject.toml (tests/test_kuberay.py checks
# them). Nothing secret is built in: passwords and tokens come from Kubernetes Secrets at run time.
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

ARG RAY_VERSION
ARG VARIANT
ARG TORCH_VERSION=2.13.0

# Ray's images run as the unprivileged user ray (uid 1000, group users) with Python in
# /home/ray/anaconda3, writable by that user; stay that user.
USER 1000:100
WORKDIR /home/ray

COPY --chown=1000:100 pyproject.toml README.md /home/ray/eyenet-src/
COPY --chown=1000:100 src /home/ray/eyenet-src/src
COPY --chown=1000:100 serve /home/ray/eyenet-src/serve
COPY --chown=1000:100 train /home/ray/eyenet-src/train
COPY --chown=1000:100 tune /home/ray/eyenet-src/tune

# torch first, from the PyTorch CPU index for the cpu variant (no CUDA libraries) or PyPI's CUDA
# build for gpu; then EyeNet with the ranges pinned in pyproject.toml (pip keeps that torch, which
# satisfies torch==TORCH_VERSION, and the image's Ray, which satisfies the Ray pin).
RUN set -eux; \
    if [ "$VARIANT" = "cpu" ]; then \
        python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; \
    else \
        python -m pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi; \
    python -m pip install --no-cache-dir /home/ray/eyenet-src; \
    rm -rf /home/ray/eyenet-src; \
    python -c "import ray, torch, eyenet.serve.app; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('eyenet on ray', ray.__version__, 'torch', torch.__version__)"

LABEL org.opencontainers.image.title="eyenet" \
      org.opencontainers.image.description="EyeNet anomaly detection on Ray ${RAY_VERSION} (${VARIANT})"
