"""Monitoring: drift reports per (model version, window) and retraining decisions.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fti_drift_reports",
        sa.Column("report_id", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("window_kind", sa.String(16), nullable=False),
        sa.Column("window_start", sa.DateTime, nullable=False),
        sa.Column("window_end", sa.DateTime, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("drift_share", sa.Float, nullable=True),
        sa.Column("drifted", sa.JSON, nullable=False),
        sa.Column("prediction_drift", sa.Boolean, nullable=True),
        sa.Column("labeled_rows", sa.Integer, nullable=False),
        sa.Column("performance", sa.JSON, nullable=True),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("report_id", name="pk_fti_drift_reports"),
    )
    op.create_index("ix_fti_drift_reports_model", "fti_drift_reports", ["model_name", "window_end"])
    op.create_table(
        "fti_retrain_decisions",
        sa.Column("decision_id", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("trigger", sa.JSON, nullable=False),
        sa.Column("report_ids", sa.JSON, nullable=False),
        sa.Column("champion_version", sa.String(32), nullable=True),
        sa.Column("candidate_version", sa.String(32), nullable=True),
        sa.Column("champion_score", sa.Float, nullable=True),
        sa.Column("candidate_score", sa.Float, nullable=True),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_fti_retrain_decisions"),
    )
    op.create_index("ix_fti_retrain_decisions_model", "fti_retrain_decisions", ["model_name", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_fti_retrain_decisions_model", table_name="fti_retrain_decisions")
    op.drop_table("fti_retrain_decisions")
    op.drop_index("ix_fti_drift_reports_model", table_name="fti_drift_reports")
    op.drop_table("fti_drift_reports")
