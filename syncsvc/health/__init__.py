"""Tenant health for operators: the rules that decide ``ok | degraded | failing`` and the report.

``rules`` is pure (facts in, verdict out) so every rule is unit-tested; ``report`` reads the
database through ``syncsvc.db.health_repo`` and turns rows into facts, figures and a verdict.
"""
