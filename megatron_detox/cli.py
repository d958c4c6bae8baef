"""``megatron-detox <command>``: thin argument parsing; the work lives in the packages.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning an exit code). A ``UserError``
is printed as one line and exits with code 2; a pre-emption signal (``Preempted``)
exits with ``REQUEUE_EXIT_CODE`` (75), which the SLURM scripts requeue on.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from megatron_detox import __version__
from megatron_detox.diskfull import disk_full_errno, disk_full_message
from megatron_detox.errors import UserError
from megatron_detox.preemption import REQUEUE_EXIT_CODE, Preempted

# Modules providing ``register(subparsers)``, in the order shown by ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "megatron_detox.commands.setup",
    "megatron_detox.commands.models",
    "megatron_detox.commands.score",
    "megatron_detox.commands.scorer",
    "megatron_detox.commands.data",
    "megatron_detox.commands.generate",
    "megatron_detox.commands.train",
    "megatron_detox.commands.export",
    "megatron_detox.commands.convert",
    "megatron_detox.commands.peft",
    "megatron_detox.commands.evaluate",
    "megatron_detox.commands.plan",
    "megatron_detox.commands.sgeat",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-detox",
        description="SGEAT detoxification on Megatron-style parallelism.",
    )
    parser.add_argument("--version", action="version", version=f"megatron-detox {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a trailing ``key=value ...`` positional at the first flag
        # (``train CFG --no-progress a=1 b=2``); such leftovers are still overrides.
        if isinstance(getattr(args, "overrides", None), list) and all(
            "=" in item and not item.startswith("-") for item in extra
        ):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"megatron-detox {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Preempted as stopped:  # finished records are kept; the SLURM scripts requeue on this code
        print(f"megatron-detox {args.command}: {stopped}; finished work is kept, rerun the same command to "
              f"continue (exit {REQUEUE_EXIT_CODE}: requeue)", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, like other CLI tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1
    except OSError as error:  # a full disk where no writer named its file: still one line
        code = disk_full_errno(error)
        if code is None:
            raise
        print(f"megatron-detox {args.command}: error: {disk_full_message(error.filename or '.', code)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"megatron-detox {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
