"""Bearer tokens: each scoped to one project or to admin, stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from analysis.runner.server.errors import ApiError
from analysis.runner.server.store import Store

__all__ = ["Principal", "authenticate", "create_token", "hash_token"]

_PREFIX = "an_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or one project."""

    token_id: str
    project_id: str | None
    admin: bool

    def require_project(self, project_id: str) -> None:
        """Refuse (403) unless this caller may act on ``project_id``."""
        if not self.admin and self.project_id != project_id:
            raise ApiError(403, "forbidden", f"This token may not access project {project_id!r}.")

    def require_admin(self) -> None:
        """Refuse (403) unless this caller is an admin."""
        if not self.admin:
            raise ApiError(403, "forbidden", "This route needs an admin token.")


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are 256-bit random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, *, project_id: str | None, admin: bool = False) -> str:
    """Create a token scoped to ``project_id`` (or admin) and return it; only its hash is kept."""
    if (project_id is None) == (not admin):
        raise ValueError("A token is scoped to exactly one of a project or admin.")
    token = _PREFIX + secrets.token_urlsafe(32)
    store.insert_token(uuid.uuid4().hex, hash_token(token), project_id, admin)
    return token


def authenticate(store: Store, authorization: str | None) -> Principal:
    """The caller behind an ``Authorization: Bearer ...`` header, or a 401 ``ApiError``."""
    if not authorization:
        raise ApiError(401, "unauthorized", "Send a bearer token: Authorization: Bearer <token>.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "The Authorization header must be 'Bearer <token>'.")
    row = store.token_by_hash(hash_token(token.strip()))
    if row is None:
        raise ApiError(401, "unauthorized", "The bearer token is not valid.")
    return Principal(row["id"], row["project_id"], bool(row["admin"]))
