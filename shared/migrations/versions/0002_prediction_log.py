"""Prediction log: one row per prediction served by the inference service.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fti_predictions",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("feature_version", sa.Integer, nullable=True),
        sa.Column("record_id", sa.Text, nullable=False),
        sa.Column("entity_key", sa.Text, nullable=False),
        sa.Column("event_time", sa.DateTime, nullable=True),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", name="pk_fti_predictions"),
    )
    op.create_index("ix_fti_predictions_model", "fti_predictions", ["model_name", "model_version"])
    op.create_index("ix_fti_predictions_created_at", "fti_predictions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_fti_predictions_created_at", table_name="fti_predictions")
    op.drop_index("ix_fti_predictions_model", table_name="fti_predictions")
    op.drop_table("fti_predictions")
