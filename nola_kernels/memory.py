"""Peak extra memory of a call, for tests, benchmarks and the demo.

CUDA: the caching allocator's statistics. CPU: PyTorch keeps no CPU statistics, and the process's
resident set mostly shows glibc's heap reuse, so the call runs under the PyTorch profiler with
memory recording and the peak is the highest running sum of its tensor allocations and frees.
"""

import contextlib
import gc
import os
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory(fn, device):
    """Run fn() and return (its result, the peak tensor bytes it held on `device` above what was
    live before the call)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on CUDA or CPU devices, not on {device}")
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_log_filtered():
        profiler.start()
        try:
            result = fn()
        finally:
            profiler.stop()
    return result, _peak_of(profiler)


def _peak_of(profiler):
    events = [
        e
        for e in profiler.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


# Lines the profiler's C++ side writes to stderr on every start/stop, and once when the call
# frees a tensor allocated before profiling began; everything else written meanwhile is kept.
_PROFILER_NOISE = ("USDT:", "profiler_st", "Memory block of unknown size")


@contextlib.contextmanager
def _profiler_log_filtered():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not any(noise in line for noise in _PROFILER_NOISE)]
            sys.stderr.write("".join(kept))
