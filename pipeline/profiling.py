"""Host-side cost of a training step: device->host syncs and kernel launches per step (run.profile_steps).

A GPU step is host-bound when the CPU waits for the device (a sync: ``.item()``, ``.tolist()``,
a blocking copy) or spends its time launching many small kernels. torch.profiler records the
CUDA runtime/driver calls the step makes; this counts them over a few steps after warm-up.

    profiler = StepProfiler(device, first_step=warmup + 1, steps=5)
    for step in ...:
        profiler.before_step(step)
        ... the step ...
        profiler.after_step(step)
    profiler.result   # {"steps": 5, "syncs_per_step": 2.0, "launches_per_step": 57.4, ...} on CUDA

On CPU there is nothing to count (no device to wait for or launch on): result stays None.
"""

from __future__ import annotations

from collections import Counter

import torch

# runtime/driver calls that block the host until the device catches up (a D2H copy for .item() is a
# cudaMemcpyAsync followed by cudaStreamSynchronize: counted once, as the sync)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cuStreamSynchronize",
              "cuCtxSynchronize", "cuEventSynchronize")
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")


class StepProfiler:
    """Profiles steps [first_step, first_step + steps) on CUDA and keeps per-step counts in ``result``."""

    def __init__(self, device: torch.device, first_step: int, steps: int):
        self.enabled = steps > 0 and device.type == "cuda"
        self.first_step, self.last_step = first_step, first_step + steps - 1
        self.steps = steps
        self.result: dict | None = None
        self._prof = None

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.first_step:
            torch.cuda.synchronize()
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                            torch.profiler.ProfilerActivity.CUDA])
            self._prof.__enter__()

    def after_step(self, step: int) -> None:
        if self._prof is None or step != self.last_step:
            return
        torch.cuda.synchronize()  # the profile ends with the step's kernels done, not counted as the step's sync
        self._prof.__exit__(None, None, None)
        calls = [e for e in self._prof.events() if e.name in SYNC_CALLS or e.name in LAUNCH_CALLS]
        # CUDA runtime calls carry the id of the thread that made them; the training thread is the one that
        # launched the most kernels (the prefetch thread launches a few copies or the synthetic generator)
        launches_by_thread = Counter(e.thread for e in calls if e.name in LAUNCH_CALLS)
        main = launches_by_thread.most_common(1)[0][0] if launches_by_thread else None
        syncs = sum(1 for e in calls if e.name in SYNC_CALLS and e.thread == main) - 1  # minus the synchronize above
        syncs_all = sum(1 for e in calls if e.name in SYNC_CALLS) - 1
        self.result = {
            "steps": self.steps,
            # the training thread's syncs stall the step; the prefetch thread's only its own side stream
            "syncs_per_step": syncs / self.steps,
            "launches_per_step": launches_by_thread.get(main, 0) / self.steps,
            "other_thread_syncs_per_step": (syncs_all - syncs) / self.steps,
            "other_thread_launches_per_step": (sum(launches_by_thread.values()) - launches_by_thread.get(main, 0))
            / self.steps,
        }
        self._prof = None
