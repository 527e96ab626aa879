"""Host-side cost of a training step: device->host syncs and kernel launches per step (run.profile_steps).

A GPU step is host-bound when the CPU waits for the device (a sync: ``.item()``, ``.tolist()``,
a blocking copy) or spends its time launching many small kernels. torch.profiler records the
CUDA runtime/driver calls the step makes; this counts them over a few steps after warm-up.

    profiler = StepProfiler(device, first_step=warmup + 1, steps=5)
    for step, batch in enumerate(batches, start=1):   # fetching step s's batch counts for step s
        profiler.before_step(step)
        ... the step ...
        profiler.after_step(step)
    profiler.result   # {"steps": 5, "syncs_per_step": 2.0, "launches_per_step": 57.4, ...} on CUDA

On CPU nothing waits for a device and nothing launches, so the profile predicts instead, per line of code
(labelled so: ``predicted_*`` counts and a ``prediction`` note). training.census.HostSyncCensus lists the
calls that would block the host on a GPU (``.item()``, ``.tolist()``, ``nonzero``, ``torch.unique``, pageable
host->device copies, ...: ``predicted_syncs_per_step``, ``sync_sites``); training.launch_census.LaunchCensus
the kernels a CUDA step would launch (aten ops weighted by their CUDA implementations, Triton kernels,
collectives), with the dense network as torch.compile would run it and the dense optimizer fused
(training.launch_prediction: ``predicted_launches_per_step``, ``launch_sites``, ``launch_components`` per
training.stages stage, ``launch_method``). tests/training/test_host_syncs.py and test_launches.py hold the
step to its budgets.
"""

from __future__ import annotations

from collections import Counter

import torch

from training.census import HostSyncCensus
from training.launch_census import LaunchCensus
from training.launch_prediction import launch_report

# runtime/driver calls that block the host until the device catches up (a D2H copy for .item() is a
# cudaMemcpyAsync followed by cudaStreamSynchronize: counted once, as the sync)
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
LAUNCH_CALLS = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
)


class StepProfiler:
    """Profiles steps [first_step, first_step + steps) and keeps per-step counts in ``result``: on CUDA the
    runtime's syncs and kernel launches (torch.profiler); on CPU a prediction of both (HostSyncCensus and
    LaunchCensus, per line of code; the launches with the dense network compiled (``dense_compiled``, as
    model.compile = "auto" does on CUDA) under ``dense_autocast`` (bf16, as train.bf16 makes it on CUDA) and the
    dense optimizer fused or foreach: training.launch_prediction)."""

    def __init__(
        self,
        device: torch.device,
        first_step: int,
        steps: int,
        dense_compiled: bool = True,
        dense_autocast: torch.dtype | None = torch.bfloat16,
    ):
        self.enabled = steps > 0
        self.cuda = device.type == "cuda"
        self.first_step, self.last_step = first_step, first_step + steps - 1
        self.steps = steps
        self.dense_compiled, self.dense_autocast = dense_compiled, dense_autocast
        self.result: dict | None = None
        # torch.profiler.profile (CUDA), or (HostSyncCensus, LaunchCensus) (CPU), while profiling
        self._prof = None

    def before_step(self, step: int) -> None:
        # only when no step came before it to start from (see after_step)
        if step == self.first_step:
            self._start()

    def _start(self) -> None:
        if not self.enabled or self._prof is not None:
            return
        if self.cuda:
            torch.cuda.synchronize()
            self._prof = torch.profiler.profile(
                activities=[
                    torch.profiler.ProfilerActivity.CPU,
                    torch.profiler.ProfilerActivity.CUDA,
                ]
            )
            self._prof.__enter__()
        else:
            self._prof = (HostSyncCensus(), LaunchCensus())
            for census in self._prof:
                census.__enter__()

    def after_step(self, step: int) -> None:
        # from the end of the step before: a step's batch (and, pipelined, the next batch's input_dist) is
        # fetched between the two, and belongs to it
        if step == self.first_step - 1:
            self._start()
        if self._prof is None or step != self.last_step:
            return
        prof, self._prof = self._prof, None
        if self.cuda:
            # the profile ends with the step's kernels done, not counted as the step's sync
            torch.cuda.synchronize()
            prof.__exit__(None, None, None)
            self.result = self._cuda_result(prof)
            return
        syncs, launches = prof
        launches.__exit__(None, None, None)
        syncs.__exit__(None, None, None)
        self.result = {
            "steps": self.steps,
            "prediction": "CPU census of what a CUDA step would do (training.census, "
            "training.launch_census, training.launch_prediction): no device was measured",
            "predicted_syncs_per_step": sum(syncs.sites.values()) / self.steps,
            "sync_sites": {site: n / self.steps for site, n in sorted(syncs.sites.items())},
            **launch_report(launches, self.steps, self.dense_autocast, self.dense_compiled),
        }

    def _cuda_result(self, prof) -> dict:
        calls = [e for e in prof.events() if e.name in SYNC_CALLS or e.name in LAUNCH_CALLS]
        # CUDA runtime calls carry the id of the thread that made them; the training thread is the one that
        # launched the most kernels (the prefetch thread launches a few copies or the synthetic generator)
        launches_by_thread = Counter(e.thread for e in calls if e.name in LAUNCH_CALLS)
        main = launches_by_thread.most_common(1)[0][0] if launches_by_thread else None
        # minus the synchronize above
        syncs = sum(1 for e in calls if e.name in SYNC_CALLS and e.thread == main) - 1
        syncs_all = sum(1 for e in calls if e.name in SYNC_CALLS) - 1
        return {
            "steps": self.steps,
            # the training thread's syncs stall the step; the prefetch thread's only its own side stream
            "syncs_per_step": syncs / self.steps,
            "launches_per_step": launches_by_thread.get(main, 0) / self.steps,
            "other_thread_syncs_per_step": (syncs_all - syncs) / self.steps,
            "other_thread_launches_per_step": (
                sum(launches_by_thread.values()) - launches_by_thread.get(main, 0)
            )
            / self.steps,
        }
