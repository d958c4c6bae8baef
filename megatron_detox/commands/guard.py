"""CLI glue for cluster-safe run folders: ``--force-unlock`` and the guard around a command.

``guard(folder)`` = the folder's run lock (``megatron_detox.runlock``) + pre-emption
signals raising ``Preempted`` (``megatron_detox.preemption``); ``guard(file, file=True)``
locks one output file instead of a folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from megatron_detox.preemption import raise_on_preemption
from megatron_detox.runlock import hold_output_lock, hold_run_lock

FORCE_UNLOCK_HELP = ("take over the output's lock even if another host's run holds it (only when you know that run "
                     "is dead; a lock of a finished process on this host is taken over without it)")


def add_force_unlock(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force-unlock", action="store_true", help=FORCE_UNLOCK_HELP)


@contextmanager
def guard(target: str | Path | None, *, force: bool = False, file: bool = False) -> Iterator[None]:
    """Hold ``target``'s lock (none if None) and stop on SIGTERM/SIGUSR1 with ``Preempted``."""
    with ExitStack() as stack:
        if target is not None:
            stack.enter_context(hold_output_lock(target, force=force) if file else hold_run_lock(target, force=force))
        stack.enter_context(raise_on_preemption())
        yield


def guarded(func: Callable[[argparse.Namespace], int], *, file: bool = False) -> Callable[[argparse.Namespace], int]:
    """``func`` run inside ``guard(args.out)`` (or ``args.output`` with ``file=True``)."""

    def run(args: argparse.Namespace) -> int:
        target = args.output if file else getattr(args, "out", None)
        with guard(target, force=args.force_unlock, file=file):
            return func(args)

    return run
