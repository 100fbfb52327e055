# Airflow image with medml's DAGs, plugins and library (scheduler, dag-processor, api-server,
# workers). Build from the repository root:
#   docker build -f docker/airflow.Dockerfile -t medml-airflow .
FROM apache/airflow:3.3.2-python3.11

USER root
COPY pyproject.toml uv.lock README.md /opt/medml-src/
COPY medml /opt/medml-src/medml
COPY recipes /opt/medml-src/recipes
RUN chown -R airflow: /opt/medml-src
USER airflow

# medml and the providers, pinned by the project's lock (exported for pip, which the official
# image uses), installed next to Airflow.
RUN pip install --no-cache-dir "uv==0.13.8" \
 && cd /opt/medml-src \
 && uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/medml-src

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
