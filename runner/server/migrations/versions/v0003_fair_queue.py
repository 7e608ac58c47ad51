"""Fair dispatch and live logs with a PostgreSQL store: turns per project, log lines, kernel start time."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``project_turns``, ``job_logs``, ``jobs.kernel_start_s`` and indexes for claims and figures."""
    op.create_table(
        "project_turns",
        sa.Column("project_id", sa.String(64), primary_key=True),
        sa.Column("served", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "job_logs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id", "id"])
    op.add_column("jobs", sa.Column("kernel_start_s", sa.Float))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    queued = sa.text("status = 'queued'")  # each project's oldest queued job, without a scan
    op.create_index(
        "ix_jobs_queued_project", "jobs", ["project_id", "seq"], postgresql_where=queued, sqlite_where=queued
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_jobs_queued_project", "jobs")
    op.drop_index("ix_jobs_finished_at", "jobs")
    op.drop_column("jobs", "kernel_start_s")
    op.drop_index("ix_job_logs_job_id", "job_logs")
    op.drop_table("job_logs")
    op.drop_table("project_turns")
