"""The listener process: the instance's one PostgreSQL connection, fanned out to its workers.

Started (and restarted) by ``relay.supervisor`` as ``python -m relay listen``; nothing here
runs in a gunicorn worker.
"""
