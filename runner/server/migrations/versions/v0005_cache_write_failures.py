"""The result cache's ``write_failures`` counter: entries the cache folder could not take."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``cache_counters.write_failures`` (see ``analysis.runner.server.cache_counters``)."""
    op.add_column(
        "cache_counters", sa.Column("write_failures", sa.BigInteger, nullable=False, server_default="0")
    )


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("cache_counters") as batch:
        batch.drop_column("write_failures")
