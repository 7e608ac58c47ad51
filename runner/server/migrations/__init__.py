"""Alembic migrations of the server's store (run by :func:`analysis.runner.server.store.open_store`)."""
