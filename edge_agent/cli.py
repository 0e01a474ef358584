"""``citybrain-edge``: the device agent's command line (argparse only, so the
edge extra stays small).

    citybrain-edge run [--config FILE]   run the agent until SIGTERM/SIGINT
    citybrain-edge hardware              print the detected hardware profile (JSON)
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="citybrain-edge",
        description="citybrain edge agent: keeps this device on its desired models, runs them "
        "on camera streams, sends hard cases back.",
    )
    p.add_argument("--version", action="store_true", help="print the agent version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the agent",
        description="Run the agent. Settings come from --config (TOML or JSON), overridden by "
        "CITYBRAIN_EDGE_* environment variables (nested with __).",
    )
    run.add_argument("--config", type=Path, default=None, help="TOML or JSON config file")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="json: one object per line (ts, level, logger, msg, device, extra fields); "
        "default: the log_format setting (CITYBRAIN_EDGE_LOG_FORMAT), else text",
    )
    sub.add_parser("hardware", help="print the detected hardware profile as JSON")
    return p


def _run(config: Path | None, log_level: str, log_format: str | None) -> int:
    from edge_agent._agent import Agent
    from edge_agent._config import load_config
    from edge_agent._logging import configure_logging

    cfg = load_config(config)
    configure_logging(log_format or cfg.log_format, log_level, device=cfg.device_id)  # type: ignore[arg-type]
    agent = Agent(cfg)

    def _term(signum: int, frame: object) -> None:
        agent._stop.set()  # run_forever notices and stops cleanly

    signal.signal(signal.SIGTERM, _term)
    agent.run_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from edge_agent import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    from edge_agent._errors import EdgeError
    from edge_agent.protocol import ProtocolError

    try:
        if args.command == "hardware":
            from edge_agent._hardware import detect_hardware

            print(detect_hardware().model_dump_json(indent=2))
            return 0
        if args.command == "run":
            return _run(args.config, args.log_level, args.log_format)
    except (EdgeError, ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
