"""Time spent in the point head and in the point selection, within one inference pass.

The two functions are timed through Python's profiler hook (``sys.setprofile``), which reports
every call and return of a Python function: nothing of the model or of its modules is replaced,
and the functions are recognised by their code objects wherever they are called from. When one of
them never runs in the pass (the head was restructured), the measurement raises instead of
reporting 0.

On CPU each call is timed with ``time.perf_counter`` (:class:`PerfCounterClock`). On CUDA the
point head's calls are small and many: waiting for the GPU at each of them would stall the queue
and inflate their share. Instead a pair of CUDA events is recorded on the stream around each call
(:class:`EventClock`) and their elapsed times are summed after one ``torch.cuda.synchronize`` at
the end: the GPU time between the two markers, with nothing waited for in between.
"""

import inspect
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from pointrend_sem.modeling.point_sampling import select_uncertain_grid_points

from .measure import measure_call


class PerfCounterClock:
    """Sums the wall-clock seconds (``time.perf_counter``) of intervals: ``stop(start())``."""

    def __init__(self):
        self.seconds = 0.0

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, start: float) -> None:
        self.seconds += time.perf_counter() - start

    def total_seconds(self) -> float:
        return self.seconds


class EventClock:
    """Sums the GPU time of intervals: ``stop(start())`` records a pair of timing events on the
    current CUDA stream without waiting for the GPU; :meth:`total_seconds` synchronizes once and
    adds up the pairs' ``elapsed_time``.

    ``event_class`` and ``synchronize`` default to ``torch.cuda.Event`` and
    ``torch.cuda.synchronize`` (tests pass stand-ins).
    """

    def __init__(
        self, event_class: Optional[Callable] = None, synchronize: Optional[Callable] = None
    ):
        self.event_class = event_class or torch.cuda.Event
        self.synchronize = synchronize or torch.cuda.synchronize
        self.pairs: List[Tuple[Any, Any]] = []

    def _record(self) -> Any:
        event = self.event_class(enable_timing=True)
        event.record()
        return event

    def start(self) -> Any:
        return self._record()

    def stop(self, start: Any) -> None:
        self.pairs.append((start, self._record()))

    def total_seconds(self) -> float:
        self.synchronize()
        return sum(start.elapsed_time(end) for start, end in self.pairs) / 1000.0  # ms -> s


def new_clock(device: str):
    """The clock of :class:`CallTimer` on ``device``: CUDA events on CUDA, else perf_counter."""
    return EventClock() if device.startswith("cuda") else PerfCounterClock()


class CallTimer:
    """While active (``with``), times and counts the calls of the given Python functions, e.g.
    ``CallTimer({"point_logits": Head.point_logits}, "cpu")``; after the block, ``seconds`` and
    ``calls`` hold, per name, the summed time and the number of calls.

    Each name gets a clock of ``clock(device)`` (:func:`new_clock`: CUDA events on CUDA, nothing
    waited for during the block; ``time.perf_counter`` on CPU), read when the block ends.
    """

    def __init__(self, functions: Dict[str, Callable], device: str, clock=new_clock):
        self.names = {inspect.unwrap(fn).__code__: name for name, fn in functions.items()}
        self.clocks = {name: clock(device) for name in functions}
        self.seconds = {name: 0.0 for name in functions}
        self.calls = {name: 0 for name in functions}
        self.starts = {name: [] for name in functions}  # stack: a function may call itself
        self.previous_profiler = None

    def profile(self, frame, event: str, arg: Any) -> None:
        """The ``sys.setprofile`` callback."""
        if event not in ("call", "return"):
            return
        name = self.names.get(frame.f_code)
        if name is None:
            return
        if event == "call":
            self.starts[name].append(self.clocks[name].start())
        else:
            self.clocks[name].stop(self.starts[name].pop())
            self.calls[name] += 1

    def __enter__(self) -> "CallTimer":
        self.previous_profiler = sys.getprofile()
        sys.setprofile(self.profile)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.setprofile(self.previous_profiler)
        self.seconds = {name: clock.total_seconds() for name, clock in self.clocks.items()}


def measure_point_share(model: nn.Module, forward: Callable[[], Any], device: str) -> Dict:
    """Time of the point head (``sem_seg_head.point_logits``: point feature sampling + point
    head MLP) and of the point selection (``select_uncertain_grid_points``) in one extra pass
    of ``forward``, and their share of that pass (on CUDA: their GPU time, see the module's
    docstring, over the pass's wall-clock time, which ends with a synchronize).

    Raises:
        RuntimeError: when either function is not called in the pass.
    """
    timed = {
        "point_logits": type(model.sem_seg_head).point_logits,
        "select_uncertain_grid_points": select_uncertain_grid_points,
    }
    with torch.no_grad(), CallTimer(timed, device) as timer:
        seconds, _, _ = measure_call(forward, device)
    not_called = [name for name, calls in timer.calls.items() if calls == 0]
    if not_called:
        raise RuntimeError(
            f"{not_called} did not run in an inference pass of {type(model.sem_seg_head)}: "
            "update tools/benchmarking/point_share.py to the functions the head now calls."
        )
    point = timer.seconds["point_logits"]
    select = timer.seconds["select_uncertain_grid_points"]
    return {
        "point_pass_ms": 1000.0 * seconds,
        "point_head_ms": 1000.0 * point,
        "point_selection_ms": 1000.0 * select,
        "point_head_calls": timer.calls["point_logits"],
        "point_share": (point + select) / seconds,
    }
