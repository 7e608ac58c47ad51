"""The result cache's counters of the jobs workers ran, per project, for the server's ``/metrics``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COUNTERS = ("hits", "misses", "stored", "dropped", "evicted", "bytes_read", "bytes_written")


def upgrade() -> None:
    """Add the ``cache_counters`` table (see ``analysis.runner.server.cache_counters``)."""
    op.create_table(
        "cache_counters",
        sa.Column("project_id", sa.String(64), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in _COUNTERS),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("cache_counters")
