"""Alembic environment for the feature store.

Run through :func:`shared.feature_table.upgrade`, which passes an open
connection; the version table is ``fti_alembic_version`` so fti can share a
database with MLflow's own ``alembic_version``.
"""

from alembic import context

from shared import prediction_table  # noqa: F401 - registers fti_predictions on the metadata
from shared.feature_table import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable from the alembic CLI
    raise RuntimeError("run migrations through `fti features migrate` (shared.feature_table.upgrade)")

context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
