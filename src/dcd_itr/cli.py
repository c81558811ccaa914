"""`dcd <command>`: a thin dispatcher. Each command is a plain function in ``dcd_itr.commands`` that tests call.

Errors we raise on purpose (:class:`~dcd_itr.errors.DcdError`: bad data, bad config, mismatched cache) and
``OSError`` (a folder that cannot be written, a full disk: it names the path) are printed as one clear message
with exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

from dcd_itr import __version__
from dcd_itr.commands import bench as bench_commands
from dcd_itr.commands import data as data_commands
from dcd_itr.commands import demo as demo_commands
from dcd_itr.commands import eval as eval_commands
from dcd_itr.commands import export as export_commands
from dcd_itr.commands import features as features_commands
from dcd_itr.commands import index as index_commands
from dcd_itr.commands import search as search_commands
from dcd_itr.commands import serve as serve_commands
from dcd_itr.commands import train as train_commands
from dcd_itr.errors import DcdError

# Explicit list of command modules, each with add_parser(subparsers); no decorator registry.
COMMAND_MODULES = (
    data_commands,
    features_commands,
    train_commands,
    eval_commands,
    index_commands,
    export_commands,
    search_commands,
    serve_commands,
    demo_commands,
    bench_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcd",
        description="dcd-itr: distil slow image-text cross-encoders into fast students with Dynamic Contrastive "
        "Distillation, evaluate them, and serve search.",
    )
    parser.add_argument("--version", action="version", version=f"dcd-itr {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except DcdError as error:
        print(f"dcd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable or missing path outside atomic writes: the path, no traceback
        print(f"dcd {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dcd {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
