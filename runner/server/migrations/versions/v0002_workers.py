"""Jobs run by ``analysis worker``: the queue's job id, the worker, artifacts and datasources files."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``jobs.queue_job_id``, ``jobs.worker`` and the ``artifacts`` and ``datasources`` tables."""
    op.add_column("jobs", sa.Column("queue_job_id", sa.BigInteger))
    op.add_column("jobs", sa.Column("worker", sa.String(255)))
    op.create_table(
        "artifacts",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "datasources",
        sa.Column("project_id", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("datasources")
    op.drop_table("artifacts")
    op.drop_column("jobs", "worker")
    op.drop_column("jobs", "queue_job_id")
