"""What ``syncsvc sandbox`` prints on start: tenants, their URLs, clients and test patients."""

from __future__ import annotations

from .server import RunningSandbox


def describe(sandbox: RunningSandbox) -> str:
    """A human-readable summary of a running sandbox."""
    lines = [f"Sandbox EHR listening on {sandbox.origin}", ""]
    for tenant in sandbox.state.config.tenants:
        urls = sandbox.state.urls(tenant)
        policy = tenant.policy
        lines += [
            f"Tenant {tenant.name}",
            f"  id         {tenant.id}  (vendor profile: {tenant.vendor}, host: {tenant.host})",
            f"  FHIR base  {urls.fhir_base}",
            f"  authorize  {urls.authorize}",
            f"  token      {urls.token}",
            f"  tokens     {policy.access_token_lifetime}s access, "
            f"refresh mode {policy.refresh_mode}",
        ]
        if policy.auto_approve_patient:
            lines.append(f"  auto-approves patient {policy.auto_approve_patient} (no login page)")
        lines.append("")
    lines.append("Client registrations (sandbox-only credentials)")
    for client in sandbox.state.config.clients:
        where = ", ".join(client.tenants) if client.tenants else "all tenants"
        secret = f"; secret '{client.secret}'" if client.secret else ""
        lines.append(f"  {client.client_id}  ({client.auth}{secret}; {where})")
        lines.extend(f"    redirect {uri}" for uri in client.redirect_uris)
    patients = {p.id: p for t in sandbox.state.config.tenants for p in t.patients}
    lines += ["", "Test patients (sandbox portal logins)"]
    lines.extend(
        f"  {p.id}  {p.given} {p.family}  login '{p.username or p.id}', password '{p.password}'"
        for p in patients.values()
    )
    return "\n".join(lines)
