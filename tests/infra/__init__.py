"""Test infrastructure: helpers that start REAL components (PostgreSQL, MLflow server).

Nothing here does work at import time; fixtures in ``tests/conftest.py`` call
these helpers. Every wait is bounded and every start has a matching stop.
"""
