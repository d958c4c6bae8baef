"""One single-thread process per CPU thread for decoding (process-per-core data parallelism).

A CPU decode step at batch 16-32 is a chain of small GEMMs and many small elementwise ops:
split over OpenMP threads, each op waits at a barrier for its slowest thread, and numpy's
OpenBLAS path (:mod:`generate.cpu_linears`) only pays at one thread. N forked processes
of one thread each keep every core busy on the one-thread paths; threads of one process
would share the GIL (measured 0.72-0.90 of two processes, ``docs/benchmarks.md``).

Workers are forked after the model is loaded, so the weights are shared copy-on-write
and not loaded again. In the generation stage worker ``w`` of ``n`` acts as data-parallel
rank ``w`` with its own shard; its rows take their samples from one :class:`SharedQueue`, so
no worker idles while another still has a backlog. Results (small: counts, lengths) come
back through a pipe; the first worker that fails stops the others, and its error is
raised in the parent (a :class:`UserError` as is, anything else with the worker's
traceback).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

import torch

from megatron_detox.errors import UserError

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def resolve_cpu_workers(requested: int, device: torch.device, *, single_process: bool, eager: bool,
                        num_items: int) -> int:
    """How many worker processes a generation run uses: 1 means none (decode in this process).

    ``requested`` 0 (auto) is one per torch thread. Workers apply to a single-process run
    (not under torchrun: its ranks are the data parallelism) on CPU with an eager decode
    step (a compiled step would compile once per worker), and never exceed the thread
    count or the number of samples.
    """
    if requested < 0:
        raise UserError(f"cpu_workers={requested}: must be >= 0 (0: one per CPU thread, 1: none)")
    if device.type != "cpu" or not single_process or not eager or not fork_available():
        return 1
    threads = torch.get_num_threads()
    wanted = threads if requested == 0 else requested
    return max(1, min(wanted, threads, num_items))


class SharedQueue(Generic[T]):
    """Items handed out once each to forked workers, in order, as each asks: a counter in
    shared memory under a lock. Made before the fork; a worker whose rows free up early
    takes the next item instead of idling while another drains a longer share."""

    def __init__(self, items: Sequence[T]) -> None:
        self.items = list(items)
        self._next = multiprocessing.get_context("fork").Value("q", 0)

    def take(self, n: int) -> list[T]:
        with self._next.get_lock():
            start = self._next.value
            end = min(start + n, len(self.items))
            self._next.value = end
        return self.items[start:end]

    def __bool__(self) -> bool:
        return self._next.value < len(self.items)


def run_in_workers(num_workers: int, work: Callable[[int], T]) -> list[T]:
    """``[work(0), ..., work(num_workers - 1)]``, each call in its own forked process.

    The torch thread count is shared out: worker ``w`` runs with ``threads // n`` threads
    (at least one). Blocks until all have finished; on the first failure the others are
    terminated and the error is raised here.
    """
    threads = max(1, torch.get_num_threads() // num_workers)
    context = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()  # a fork copies unflushed buffers: the child would print them again
    pipes: list[Connection] = []
    processes = []
    for index in range(num_workers):
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(work, index, threads, writer, os.getpid()), daemon=True,
                                  name=f"generate-worker-{index}")
        process.start()
        writer.close()
        pipes.append(reader)
        processes.append(process)
    results: dict[int, T] = {}
    try:
        pending = dict(enumerate(pipes))
        while pending:
            for ready in wait(list(pending.values())):
                index = next(i for i, pipe in pending.items() if pipe is ready)
                try:
                    status, payload = pending.pop(index).recv()
                except EOFError:  # killed (OOM killer, signal) before it could report
                    processes[index].join()
                    raise RuntimeError(f"generation worker {index} died (exit code {processes[index].exitcode}); "
                                       "rerun the command to resume") from None
                if status == "error":
                    kind, message = payload
                    if kind == "user":
                        raise UserError(message)
                    raise RuntimeError(f"generation worker {index} failed:\n{message}")
                results[index] = payload
    finally:
        for process in processes:
            if process.is_alive() and len(results) < num_workers:
                process.terminate()
            process.join()
        for pipe in pipes:
            pipe.close()
    return [results[i] for i in range(num_workers)]


def _die_with_parent(parent: int) -> None:
    """A parent killed with SIGKILL cannot stop its workers; the kernel does (Linux), so a
    rerun never meets an orphan still appending to its shard."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: orphans finish their share and exit
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(work: Callable[[int], Any], index: int, threads: int, pipe: Connection, parent: int) -> None:
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        result = work(index)
    except UserError as error:
        pipe.send(("error", ("user", str(error))))
    except BaseException:  # noqa: BLE001 - every failure is reported to the parent, which raises it
        pipe.send(("error", ("internal", traceback.format_exc())))
    else:
        pipe.send(("ok", result))
    finally:
        pipe.close()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)  # no atexit handlers or finalizers of the parent's state in a forked child
