"""A failure no command handled, as one line for the operator and the exit code."""

from __future__ import annotations

from syncsvc.commands.common import EXIT_FAILED, EXIT_USAGE


def explain(exc: BaseException) -> tuple[str, int]:
    """One line for the operator and the exit code, for a failure no command handled."""
    import aiohttp

    from syncsvc.errors import ConfigError, SyncsvcError
    from syncsvc.http import describe_network_error
    from syncsvc.logging import redact_text

    if isinstance(exc, ConfigError):
        return exc.message, EXIT_USAGE
    if isinstance(exc, SyncsvcError):
        return exc.message, EXIT_FAILED
    if isinstance(exc, aiohttp.ClientError):
        return describe_network_error(exc), EXIT_FAILED
    database_url = _database_url()
    if database_url is not None:
        from syncsvc.db.probe import unavailable

        problem = unavailable(exc, database_url)
        if problem is not None:
            return problem.message, EXIT_FAILED
    # Unexpected: name it, scrubbed of anything that looks like a credential.
    text = redact_text(str(exc))[:300]
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"unexpected error ({detail}); run with --debug for the traceback", EXIT_FAILED


def _database_url() -> str | None:
    from syncsvc.errors import ConfigError
    from syncsvc.settings import Settings

    try:
        return Settings.from_env().database_url
    except ConfigError:
        return None
