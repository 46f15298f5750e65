"""Every tenant's search terms written as the provider search writes them: accents folded.

Revision ID: 3ecedcc582b8
Revises: a4c9e2f71b08
Create Date: 2026-12-05 21:30:00 UTC

The provider search revision filled tenant_search for the tenants it found with their names
lower-cased only, while the search folds what a patient types (accents dropped, words of letters
and digits): on PostgreSQL "hopital" did not find a "Hôpital" registered before the search
existed. This revision rewrites every tenant's terms from its columns, folded as
syncsvc.db.search_repo folds them (a delisted tenant's terms empty), and adds the row of a
tenant that has none. The folding is spelled out here, so this revision keeps meaning what it
meant when it was written.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "3ecedcc582b8"
down_revision: str | Sequence[str] | None = "a4c9e2f71b08"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1_000
_WORD = re.compile(r"[a-z0-9]+")
_TENANTS = sa.table(
    "tenants",
    sa.column("id", sa.String()),
    sa.column("display_name", sa.String()),
    sa.column("brand_name", sa.String()),
    sa.column("aliases", sa.JSON()),
    sa.column("portal_name", sa.String()),
    sa.column("street", sa.String()),
    sa.column("city", sa.String()),
    sa.column("state", sa.String()),
    sa.column("postal_code", sa.String()),
    sa.column("delisted_at", sa.DateTime(timezone=True)),
)
_SEARCH = sa.table(
    "tenant_search",
    sa.column("tenant_id", sa.String()),
    sa.column("name_terms", sa.Text()),
    sa.column("alias_terms", sa.Text()),
    sa.column("place_terms", sa.Text()),
    sa.column("document", sa.Text()),
)


def _terms(values: Iterable[Any]) -> str:
    words = []
    for value in values:
        if isinstance(value, str) and value:
            plain = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
            words.extend(_WORD.findall(plain.lower()))
    return " ".join(words)


def _columns(row: Any) -> dict[str, str]:
    if row.delisted_at is not None:
        return dict.fromkeys(("name_terms", "alias_terms", "place_terms", "document"), "")
    aliases = row.aliases if isinstance(row.aliases, list) else []
    names = _terms((row.display_name, row.brand_name))
    alias_terms = _terms((*aliases, row.portal_name))
    place = _terms((row.street, row.city, row.state, row.postal_code))
    return {
        "name_terms": names,
        "alias_terms": alias_terms,
        "place_terms": place,
        "document": " ".join(t for t in (names, alias_terms, place) if t),
    }


def upgrade() -> None:
    """Rewrite every tenant's search terms, folded."""
    bind = op.get_bind()
    indexed = set(bind.execute(sa.select(_SEARCH.c.tenant_id)).scalars())
    last = ""
    # Keyset pages: a directory of 100,000 tenants is never held in memory at once.
    while True:
        rows = bind.execute(
            sa.select(_TENANTS).where(_TENANTS.c.id > last).order_by(_TENANTS.c.id).limit(_BATCH)
        ).all()
        if not rows:
            break
        last = rows[-1].id
        updates = [{"key": row.id, **_columns(row)} for row in rows if row.id in indexed]
        inserts = [{"tenant_id": row.id, **_columns(row)} for row in rows if row.id not in indexed]
        if updates:
            bind.execute(
                _SEARCH.update()
                .where(_SEARCH.c.tenant_id == sa.bindparam("key"))
                .values(
                    name_terms=sa.bindparam("name_terms"),
                    alias_terms=sa.bindparam("alias_terms"),
                    place_terms=sa.bindparam("place_terms"),
                    document=sa.bindparam("document"),
                ),
                updates,
            )
        if inserts:
            bind.execute(_SEARCH.insert(), inserts)


def downgrade() -> None:
    """Nothing to undo: folded terms are what the search expects at every revision since."""
