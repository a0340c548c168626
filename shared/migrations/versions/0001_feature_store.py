"""Feature store: version manifest and feature rows.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fti_feature_versions",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("shared_version", sa.String(32), nullable=False),
        sa.Column("code_commit", sa.String(64), nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("source_location", sa.Text, nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("as_of", sa.DateTime, nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("dataset", "version", name="pk_fti_feature_versions"),
        sa.UniqueConstraint("dataset", "checksum", name="uq_fti_feature_versions_checksum"),
    )
    op.create_table(
        "fti_feature_rows",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("record_id", sa.String(256), nullable=False),
        sa.Column("entity_key", sa.String(256), nullable=False),
        sa.Column("event_time", sa.DateTime, nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("dataset", "version", "record_id", name="pk_fti_feature_rows"),
        sa.ForeignKeyConstraint(["dataset", "version"],
                                ["fti_feature_versions.dataset", "fti_feature_versions.version"],
                                name="fk_fti_feature_rows_version", ondelete="CASCADE"),
    )
    op.create_index("ix_fti_feature_rows_entity_time", "fti_feature_rows",
                    ["dataset", "version", "entity_key", "event_time"])


def downgrade() -> None:
    op.drop_index("ix_fti_feature_rows_entity_time", table_name="fti_feature_rows")
    op.drop_table("fti_feature_rows")
    op.drop_table("fti_feature_versions")
