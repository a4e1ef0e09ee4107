"""API keys kept in the database: made by `widgetry keys create` with their scopes, listed, revoked; only their digests
are stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from advanced_alchemy.filters import OrderBy
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy import or_, select, update

from widgetry.domain.models import ApiKey, Scope

KEY_PREFIX = "wdg_"
"""Marks a widgetry key wherever it turns up (a log, a paste, a secret scanner's findings)."""
KEY_BYTES = 32
DEFAULT_SCOPES = frozenset({Scope.WRITE})
"""A key made without naming its scopes writes, as every key did before there were scopes."""
FINGERPRINT_PREFIX_MIN = 6
"""The shortest fingerprint prefix `revoke` takes, so a slip of the keyboard does not pick a key at random."""


class KeyNotFound(Exception):
    pass


class KeyNameTaken(Exception):
    pass


def digest(key: str) -> str:
    """The key's fingerprint: its hex SHA-256. A key is 32 random bytes, so a plain hash cannot be reversed by trying
    keys; a slow or salted hash would only cost every request time."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyRepository(SQLAlchemyAsyncRepository[ApiKey]):
    model_type = ApiKey


class ApiKeyService(SQLAlchemyAsyncRepositoryService[ApiKey]):
    repository_type = ApiKeyRepository

    async def issue(self, name: str | None = None, scopes: frozenset[Scope] = DEFAULT_SCOPES) -> tuple[ApiKey, str]:
        """Stores a new key's digest and scopes, and returns the record with the key itself, which is nowhere else."""
        key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
        fingerprint = digest(key)
        name = name or f"key-{fingerprint[:8]}"
        if await self.exists(name=name):
            raise KeyNameTaken(f"A key named {name!r} exists already (revoked keys keep their names).")
        record = ApiKey(name=name, digest=fingerprint, scopes=scopes, created_at=datetime.now(UTC))
        return await self.create(record), key

    async def listed(self) -> list[ApiKey]:
        return list(await self.get_many(OrderBy("created_at", "asc")))

    async def revoke(self, name_or_prefix: str) -> ApiKey:
        """Revokes the one key with this name or whose fingerprint starts with this prefix; revoking a revoked key
        changes nothing and returns it."""
        conditions = [ApiKey.name == name_or_prefix]
        if len(name_or_prefix) >= FINGERPRINT_PREFIX_MIN:
            conditions.append(ApiKey.digest.startswith(name_or_prefix.lower(), autoescape=True))
        found = list(await self.get_many(or_(*conditions)))
        named = [key for key in found if key.name == name_or_prefix]
        if len(named) == 1:
            found = named
        if not found:
            raise KeyNotFound(f"No key is named {name_or_prefix!r} or has a fingerprint starting with it.")
        if len(found) > 1:
            names = ", ".join(sorted(key.name for key in found))
            raise KeyNotFound(f"{name_or_prefix!r} matches {len(found)} keys ({names}): give more of the fingerprint.")
        key = found[0]
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
            key = await self.update(key)
        return key

    async def check(self, fingerprint: str) -> frozenset[Scope] | None:
        """The scopes of the accepted stored key with this digest, noting when it was used; `None` for an unknown or
        revoked key. Read first: an unknown key must not take SQLite's one write lock."""
        session = self.repository.session
        found = (
            await session.execute(
                select(ApiKey.id, ApiKey.scopes).where(ApiKey.digest == fingerprint, ApiKey.revoked_at.is_(None))
            )
        ).one_or_none()
        if found is None:
            return None
        await session.execute(update(ApiKey).where(ApiKey.id == found.id).values(last_used_at=datetime.now(UTC)))
        return found.scopes
