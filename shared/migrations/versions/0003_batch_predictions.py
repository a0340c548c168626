"""Batch predictions: one manifest row per scored (feature version, model version), one row per record.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fti_prediction_batches",
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("feature_version", sa.Integer, nullable=False),
        sa.Column("feature_checksum", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_fti_prediction_batches"),
        sa.UniqueConstraint("dataset", "feature_version", "model_name", "model_version",
                            name="uq_fti_prediction_batches_key"),
    )
    op.create_table(
        "fti_batch_predictions",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(256), nullable=False),
        sa.Column("entity_key", sa.String(256), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("feature_version", sa.Integer, nullable=False),
        sa.Column("prediction", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", name="pk_fti_batch_predictions"),
        sa.UniqueConstraint("batch_id", "record_id", name="uq_fti_batch_predictions_record"),
        sa.ForeignKeyConstraint(["batch_id"], ["fti_prediction_batches.batch_id"],
                                name="fk_fti_batch_predictions_batch", ondelete="CASCADE"),
    )
    op.create_index("ix_fti_batch_predictions_record", "fti_batch_predictions", ["dataset", "record_id"])


def downgrade() -> None:
    op.drop_index("ix_fti_batch_predictions_record", table_name="fti_batch_predictions")
    op.drop_table("fti_batch_predictions")
    op.drop_table("fti_prediction_batches")
