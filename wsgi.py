"""The WSGI entry point gunicorn loads in each worker: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from relay.worker.app import create_app

app = create_app()
