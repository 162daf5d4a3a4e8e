"""``python -m joor_pipeline.sandbox``: serve the JOOR emulator until Ctrl-C."""

from __future__ import annotations

import argparse

from joor_pipeline.sandbox.server import Faults, SandboxConfig, serve_forever


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(prog="python -m joor_pipeline.sandbox", description=__doc__)
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--token-ttl", type=int, default=defaults.token_ttl)
    parser.add_argument("--rate-limit-credits", type=int, default=defaults.rate_limit_credits, help="0 disables")
    parser.add_argument("--rate-limit-window", type=float, default=defaults.rate_limit_window)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    serve_forever(
        SandboxConfig(
            connections=args.connections,
            seed=args.seed,
            host=args.host,
            port=args.port,
            token_ttl=args.token_ttl,
            rate_limit_credits=args.rate_limit_credits,
            rate_limit_window=args.rate_limit_window,
            faults=Faults(latency_ms=args.latency_ms, error_rate=args.error_rate),
        )
    )


if __name__ == "__main__":
    main()
