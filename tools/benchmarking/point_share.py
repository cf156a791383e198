"""Time spent in the point head and in the point selection, within one inference pass.

The two functions are timed through Python's profiler hook (``sys.setprofile``), which reports
every call and return of a Python function: nothing of the model or of its modules is replaced,
and the functions are recognised by their code objects wherever they are called from. When one of
them never runs in the pass (the head was restructured), the measurement raises instead of
reporting 0.
"""

import inspect
import sys
import time
from typing import Any, Callable, Dict

import torch
from torch import nn

from pointrend_sem.modeling.point_sampling import select_uncertain_grid_points

from .measure import measure_call, synchronize


class CallTimer:
    """While active (``with``), sums the wall-clock seconds and counts the calls of the given
    Python functions, e.g. ``CallTimer({"point_logits": Head.point_logits}, "cpu")``.

    On CUDA, queued work is waited for at each call and return, so the times cover it.
    """

    def __init__(self, functions: Dict[str, Callable], device: str):
        self.names = {inspect.unwrap(fn).__code__: name for name, fn in functions.items()}
        self.device = device
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
        synchronize(self.device)
        if event == "call":
            self.starts[name].append(time.perf_counter())
        else:
            self.seconds[name] += time.perf_counter() - self.starts[name].pop()
            self.calls[name] += 1

    def __enter__(self) -> "CallTimer":
        self.previous_profiler = sys.getprofile()
        sys.setprofile(self.profile)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.setprofile(self.previous_profiler)


def measure_point_share(model: nn.Module, forward: Callable[[], Any], device: str) -> Dict:
    """Time of the point head (``sem_seg_head.point_logits``: point feature sampling + point
    head MLP) and of the point selection (``select_uncertain_grid_points``) in one extra pass
    of ``forward``, and their share of that pass.

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
