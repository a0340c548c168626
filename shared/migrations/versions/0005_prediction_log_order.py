"""The prediction log in the monitor's reading order: (model, version, created_at, prediction_id).

The monitor reads each served version's predictions in ``created_at, prediction_id`` order and
resumes past the windows it has reported (an ``OFFSET``); with this index both are a walk of one
B-tree instead of a sort of the version's rows. It replaces ``(model_name, model_version)``, its
prefix.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_fti_predictions_model_time", "fti_predictions",
                    ["model_name", "model_version", "created_at", "prediction_id"])
    op.drop_index("ix_fti_predictions_model", table_name="fti_predictions")


def downgrade() -> None:
    op.create_index("ix_fti_predictions_model", "fti_predictions", ["model_name", "model_version"])
    op.drop_index("ix_fti_predictions_model_time", table_name="fti_predictions")
