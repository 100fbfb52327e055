# medml trainer image: one fold per container (`medml train --run-dir ... --fold K`).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t medml-trainer .
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/medml \
    PATH=/opt/medml/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2

RUN pip install --no-cache-dir "uv==0.13.8"

WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# Dependencies first (cached layer), from the same lock file as development and CI.
RUN uv sync --frozen --no-dev --no-install-project
COPY medml ./medml
COPY recipes ./recipes
RUN uv sync --frozen --no-dev

# Non-root user; pods also set runAsNonRoot and allowPrivilegeEscalation=false.
RUN useradd --create-home --uid 10001 medml && mkdir -p /data && chown medml /data
USER 10001
ENV MEDML_HOME=/data

ENTRYPOINT ["medml"]
CMD ["--help"]
