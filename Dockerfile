# relay — production image. Build: docker build -t relay .  Run: see fly.toml / README.
# Stage 1 builds a virtualenv with the production dependencies only (requirements.txt);
# stage 2 copies that venv and the application, and runs as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim
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
