# medml trainer image: one fold per container (`medml train --run-dir ... --fold K`).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t medml-trainer .
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/medml \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/medml/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2

RUN pip install --no-cache-dir "uv==0.13.8"

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# The base image's TensorFlow is the CUDA build (same version as the lock): the environment
# sees it through --system-site-packages, and the lock's CPU-only wheel is left out.
RUN uv venv --system-site-packages --python "$(command -v python3)" /opt/medml
# Dependencies first (cached layer), from the same lock file as development and CI.
RUN uv sync --frozen --no-dev --no-install-project --no-install-package tensorflow-cpu
COPY medml ./medml
COPY recipes ./recipes
RUN uv sync --frozen --no-dev --no-install-package tensorflow-cpu \
    && python -c "import tensorflow as tf; assert tf.test.is_built_with_cuda(), 'CPU-only TF'"

# Non-root user; pods also set runAsNonRoot and allowPrivilegeEscalation=false.
RUN useradd --create-home --uid 10001 medml && mkdir -p /data && chown medml /data
USER 10001
ENV MEDML_HOME=/data

ENTRYPOINT ["medml"]
CMD ["--help"]
