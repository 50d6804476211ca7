"""Development only: the embedded PostgreSQL (``make run``, the tests) and the ``/demo`` page.

Production never imports this package (``create_app`` registers the demo only when
``RELAY_DEV`` is on).
"""
