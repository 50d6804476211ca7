"""A gunicorn worker process: the Flask app (``/ws``, ``/health``, ``/metrics``) and the
WebSockets it holds, linked to the instance's listener over its Unix-domain socket.

gunicorn loads it through ``worker_class = "relay.worker.process.RelayWorker"`` and
``wsgi:app``; nothing here runs in the listener.
"""
