"""A faithful JOOR API emulator over real HTTP, for offline tests, benchmarks and local runs."""

from joor_pipeline.sandbox.data import generate_connections, load_seed_connection
from joor_pipeline.sandbox.render import render_json, render_xml
from joor_pipeline.sandbox.server import (
    Faults,
    Sandbox,
    SandboxConfig,
    SandboxStats,
    negotiate,
    parse_form,
    run_sandbox,
    serve_forever,
    start_sandbox,
)

__all__ = [
    "Faults",
    "Sandbox",
    "SandboxConfig",
    "SandboxStats",
    "generate_connections",
    "load_seed_connection",
    "negotiate",
    "parse_form",
    "render_json",
    "render_xml",
    "run_sandbox",
    "serve_forever",
    "start_sandbox",
]
