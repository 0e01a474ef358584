"""``citybrain-edge``: the device agent's command line (argparse only, so the
edge extra stays small)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="citybrain-edge",
        description="citybrain edge agent: keeps this device on its desired models, runs them "
        "on camera streams, sends hard cases back.",
    )
    p.add_argument("--version", action="store_true", help="print the agent version and exit")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
