"""The sandbox EHR: a multi-tenant SMART on FHIR R4 server shaped like Oracle Health and Epic."""

from .config import SandboxConfig, default_config, load_config
from .server import RunningSandbox, create_sandbox_app, running_sandbox

__all__ = [
    "RunningSandbox",
    "SandboxConfig",
    "create_sandbox_app",
    "default_config",
    "load_config",
    "running_sandbox",
]
