# syntax=docker/dockerfile:1.7
# Goshen's images. Two targets, one wheel:
#   docker build --target cpu  -t goshen:0.1.0-cpu  .   # API, webhooks, dashboard, MLflow, Dagster,
#                                                       # and workers on a laptop (CPU torch)
#   docker build --target cuda -t goshen:0.1.0-cuda .   # GPU workers and training runs
# The project is built into a wheel in the `build` stage and only that wheel is installed in the
# images: what runs in production is what `pip install goshen-*.whl` gives, never the source tree
# (no tests, no notebooks, no .goshen state). Both images run as the unprivileged user `goshen`.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# The Dagster deployment libraries the run launchers need (not in the project's extras: only a
# containerized deployment uses them), pinned to the dagster release pyproject.toml pins.
ARG DAGSTER_DEPLOY_LIBS="dagster-docker==0.29.27 dagster-k8s==0.29.27"

# ---- build: the wheel ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is made of (.dockerignore keeps the rest out of the context as well).
COPY pyproject.toml README.md ./
COPY goshen ./goshen
COPY serving ./serving
COPY goshen_pipelines ./goshen_pipelines
COPY dashboard ./dashboard
COPY goshen_launcher ./goshen_launcher
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- base: Python, the user, the virtualenv's place -----------------------------------------
FROM ${PYTHON_IMAGE} AS base
# The user owns nothing but its home and /data (a volume for anything written locally); the
# virtualenv stays root's, so a compromised process cannot rewrite the code it runs.
RUN groupadd --system --gid 10001 goshen \
    && useradd --system --uid 10001 --gid goshen --home-dir /home/goshen --create-home goshen \
    && mkdir -p /data /opt/dagster \
    && chown goshen:goshen /data /opt/dagster
ENV VIRTUAL_ENV=/opt/goshen \
    PATH=/opt/goshen/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GOSHEN_HOME=/data \
    GOSHEN_HOST=0.0.0.0 \
    DAGSTER_HOME=/opt/dagster
RUN python -m venv /opt/goshen
WORKDIR /home/goshen

# ---- cuda: GPU workers, training runs on GPU nodes ------------------------------------------
# No CUDA base image: PyTorch's Linux wheels and onnxruntime-gpu bring their CUDA 12 and cuDNN
# libraries as pip packages, and the NVIDIA container runtime mounts the host's driver. So both
# images share one Python and one Debian.
FROM base AS cuda
ARG DAGSTER_DEPLOY_LIBS
COPY --from=build /dist /dist
RUN pip install --no-cache-dir "$(ls /dist/goshen-*.whl)[serving,pipelines]" ${DAGSTER_DEPLOY_LIBS} \
    # ONNX Runtime's CUDA build in place of the CPU one `serving` installs (README: Production).
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]>=1.18" \
    && python -c "import onnxruntime, torch; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()" \
    && rm -rf /dist
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER goshen
CMD ["goshen", "worker"]

# ---- cpu: every other service (the default target) ------------------------------------------
FROM base AS cpu
ARG DAGSTER_DEPLOY_LIBS
COPY --from=build /dist /dist
# PyTorch's CPU wheels: the default Linux wheels carry ~3 GB of CUDA libraries no CPU host uses.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "$(ls /dist/goshen-*.whl)[serving,pipelines,dashboard]" ${DAGSTER_DEPLOY_LIBS} \
    && rm -rf /dist
USER goshen
EXPOSE 8000
CMD ["goshen", "api"]
