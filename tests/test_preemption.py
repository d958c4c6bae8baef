"""Pre-emption signals: raise at once for record stages, a flag for training; handlers restored."""

from __future__ import annotations

import os
import signal

import pytest

from megatron_detox.preemption import SIGNALS, Preempted, StopFlag, raise_on_preemption


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_raises_preempted_and_the_handlers_are_restored(signum: int) -> None:
    before = [signal.getsignal(s) for s in SIGNALS]
    with pytest.raises(Preempted, match=f"stopped by {signal.Signals(signum).name}"), raise_on_preemption():
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0)  # give the handler its chance to run
        raise AssertionError("the signal did not stop the block")
    assert [signal.getsignal(s) for s in SIGNALS] == before
    assert not issubclass(Preempted, Exception)  # `except Exception` blocks do not swallow it


def test_the_stop_flag_only_records_the_signal() -> None:
    flag = StopFlag()
    with flag.installed():
        assert not flag.agreed(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        signal.sigtimedwait([], 0)
        assert flag.requested and flag.agreed(1) and flag.signal_name == "SIGUSR1"
