# relay — production image. Build: docker build -t relay .  Run: see fly.toml / README.
# Stage 1 builds a virtualenv with the production dependencies only (requirements.txt, every
# package pinned with its hashes); stage 2 copies that venv and the application, and runs as
# an unprivileged user. The base image is pinned by digest: a tag can be moved under us.
# Updating either: docs/operations.md, "Updating dependencies".

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=3000
RUN groupadd --system relay && useradd --system --gid relay --home-dir /app --shell /usr/sbin/nologin relay
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY relay/ ./relay/
COPY sql/ ./sql/
COPY wsgi.py gunicorn.conf.py ./
USER relay
EXPOSE 3000
# No secret is baked in: DATABASE_URL and WEBSOCKET_JWT_SECRET come from `fly secrets set`.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
