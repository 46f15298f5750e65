"""The tables of syncsvc as typed SQLAlchemy models, one module per part of the schema.

``connections`` holds tenants, connections, their credentials and the launch; ``records`` the
synced resources and the sync runs that keep them; ``attachments`` the contents of their clinical
documents; ``directory`` the provider search; ``activity`` the event log and what is still owed
to others (revocations, webhooks). Importing any of them
imports all, so ``Base.metadata`` always knows every table (foreign keys name tables across
modules).

Primary keys are UUID4 strings made in Python, so a row's id is known before it is inserted: the
vault binds each ciphertext to its row id, and connection ids appear in URLs. Columns ending in
``_enc`` hold vault ciphertexts, never plaintext. Every timestamp is timezone-aware UTC.
"""

from . import activity, attachments, connections, directory, records  # noqa: F401  (registers every table on Base.metadata)
