"""Pre-emption: SIGTERM or SIGUSR1 stops a stage cleanly, with an exit code that means "requeue me".

SLURM sends SIGTERM before it kills a job (and, with ``#SBATCH --signal=B:USR1@120``, the
batch script gets SIGUSR1 two minutes before the time limit and forwards it). Two ways
to stop, one per kind of work:

* **records** (generation, scoring, evaluation): ``raise_on_preemption()`` turns the
  signal into :class:`Preempted`, raised in the main thread wherever it is. Every
  finished record is already durable when the signal comes (shards are fsynced per
  batch, the score cache commits per batch), temp files are removed on the way out,
  and the work in flight is simply done again by the rerun — so stopping at once is
  safe, and keeps inside SLURM's grace period however long a batch takes.
* **training**: :class:`StopFlag` only records the signal; the loop finishes its step,
  every rank agrees, a checkpoint is written, and then the run stops.

Either way the CLI exits with :data:`REQUEUE_EXIT_CODE` (75, ``EX_TEMPFAIL`` from
``sysexits.h``: a temporary failure, retry later), which the scripts in
``launch/slurm/`` answer with ``scontrol requeue``. A plain crash (1) or a user
mistake (2) is not requeued.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(BaseException):
    """A pre-emption signal arrived (a BaseException, like KeyboardInterrupt, so that
    ``except Exception`` blocks do not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


@contextlib.contextmanager
def _handling(handler: Callable[[int, FrameType | None], None]) -> Iterator[bool]:
    """Install ``handler`` for SIGTERM and SIGUSR1 for the block (False: not the main thread)."""
    previous = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: signals go elsewhere
        for signum, old in previous.items():
            signal.signal(signum, old)
        yield False
        return
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def raise_on_preemption() -> Iterator[None]:
    """Raise :class:`Preempted` in the main thread on SIGTERM/SIGUSR1 during the block."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Preempted(signum)

    with _handling(handler):
        yield


class StopFlag:
    """Set by SIGTERM/SIGUSR1: the training loop finishes the step, checkpoints, then stops."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        with _handling(handler):
            yield

    def agreed(self, world_size: int) -> bool:
        """True on every rank if any rank was signalled, so all ranks save the same step."""
        if world_size == 1:
            return self.requested
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415

        flag = torch.tensor([1.0 if self.requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
