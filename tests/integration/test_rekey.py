"""Re-encryption covers every sealed column, including tokens waiting to be revoked."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.columns import new_id
from syncsvc.db.models.activity import PendingRevocation
from syncsvc.db.rekey import count_by_key_id, reencrypt_all
from syncsvc.vault import Purpose, Vault, generate_key
from tests.integration.dbdata import add_tenant, utcnow

Sessionmaker = async_sessionmaker[AsyncSession]


async def test_pending_revocations_are_reencrypted_under_their_own_purpose(
    sessionmaker: Sessionmaker,
) -> None:
    old, new = generate_key("old"), generate_key("new")
    before = Vault([old])
    rows = {"refresh_token": new_id(), "access_token": new_id()}
    purposes = {"refresh_token": Purpose.REFRESH_TOKEN, "access_token": Purpose.ACCESS_TOKEN}
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        for hint, row_id in rows.items():
            session.add(
                PendingRevocation(
                    id=row_id,
                    tenant_id=tenant.id,
                    revocation_endpoint="https://ehr.example/revoke",
                    token_enc=before.encrypt(f"{hint}-value", purpose=purposes[hint], row=row_id),
                    token_type_hint=hint,
                    attempts=0,
                    next_attempt_at=utcnow(),
                    created_at=utcnow(),
                )
            )
    after = Vault([new, old])
    totals = await reencrypt_all(sessionmaker, after)
    assert totals["pending_revocations"] == 2
    async with sessionmaker() as session:
        assert await count_by_key_id(session) == {"new": 2}
        for hint, row_id in rows.items():
            stored = await session.get(PendingRevocation, row_id)
            assert stored is not None
            only_new = Vault([new])
            plain = only_new.decrypt(stored.token_enc, purpose=purposes[hint], row=row_id)
            assert plain == f"{hint}-value"
