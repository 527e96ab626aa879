"""report.md of bench/gpu_check.py, rendered from whatever parts have finished (after each of them)."""

from __future__ import annotations

import os

from bench.gpu_check_parts import Check
from bench.local_work import format_table as local_work_table
from training.stages import STAGES


def _fmt(value, digits=1, scale=1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def _parts_section(check: Check, budget_s: float) -> list[str]:
    lines = [
        "## Parts",
        "",
        f"In order of value; a part starts only if its estimate fits the budget left ({budget_s:.0f} s in "
        "all). Estimates: bench/gpu_check_runs.py.",
        "",
        "| part | estimate s | actual s | status |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {p['name']} | {p['estimate_s']:.0f} | {_fmt(p.get('seconds'), 0)} | {p['status']} |"
        for p in check.parts
    ]
    return [*lines, ""]


def _tests_section(tests: list[dict]) -> list[str]:
    lines = ["## Tests", "", "| command | result |", "|---|---|"]
    lines += [f"| `{r['command']}` | {r['summary']} (exit {r['returncode']}) |" for r in tests]
    return [*lines, ""]


def _kernels_section(kernels: list[dict]) -> list[str]:
    lines = [
        "## Kernels",
        "",
        "Byte models (what each GB/s counts) and workloads, per benchmark:",
        "",
    ]
    ops = {}  # (bench, byte model) -> the operations it counts, in order
    for k in kernels:
        op_list = ops.setdefault((k["bench"], k.get("byte_model", "?")), [])
        if k["impl"].split(":")[0] not in op_list:
            op_list.append(k["impl"].split(":")[0])
    lines += [f"- {bench} / {', '.join(names)}: {model}" for (bench, model), names in ops.items()]
    for bench in dict.fromkeys(k["bench"] for k in kernels):
        workload = next(k.get("workload", "") for k in kernels if k["bench"] == bench)
        lines.append(f"- {bench} workload: {workload}")
    lines += [
        "",
        "| bench | impl | size | median ms | GB/s | % of copy BW | note |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k['bench']} | {k['impl']} | {k['size']} | {k['ms_median']:.3f} | {k['gb_per_s']:.1f} | "
        f"{k['pct_copy']:.1f} | {k['note']} |"
        for k in kernels
    ]
    return [*lines, ""]


def _sync_cell(profile: dict) -> str:
    """Measured syncs per step on CUDA; on CPU the census's prediction, marked as such."""
    if "syncs_per_step" in profile:
        return _fmt(profile["syncs_per_step"])
    predicted = profile.get("predicted_syncs_per_step")
    return f"{_fmt(predicted)} (predicted)" if predicted is not None else _fmt(None)


def _run_row(r: dict, copy: float) -> str:
    """One training run's row of the table; a failed run points to its log."""
    spec = r["spec"]
    if "summary" not in r:
        return f"| {spec['name']} | {spec['batch']} | {spec['data']} | failed: see runs/{spec['name']}/log.txt |"
    s = r["summary"]
    step = 1e3 * s["global_batch_size"] / s["samples_per_sec"] if s["samples_per_sec"] else None
    prof = s.get("profile") or {}
    gbps = s.get("embedding_gbps")
    return (
        f"| {spec['name']} | {spec['batch']} | {spec['data']} | "
        f"{_fmt(s['samples_per_sec'], 0)} | {_fmt(step, 2)} | "
        f"{_fmt(s.get('data_wait_pct'))} | {_fmt(s.get('mfu_pct'), 2)} | {_fmt(gbps)} | "
        f"{_fmt(None if gbps is None else 100 * gbps / copy)} | {_fmt(s.get('peak_memory_gib'), 2)} | "
        f"{_sync_cell(prof)} | {_fmt(prof.get('launches_per_step'), 0)} |"
    )


def _runs_section(runs: list[dict], copy: float) -> list[str]:
    lines = [
        "## Training (W = 1)",
        "",
        "| run | batch | data | samples/s | step ms | data wait % | MFU % | emb GB/s | emb % copy BW | "
        "peak GiB | syncs/step | launches/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_run_row(r, copy) for r in runs]
    if any("predicted_syncs_per_step" in (r.get("summary", {}).get("profile") or {}) for r in runs):
        lines += [
            "",
            "syncs/step (predicted): no device to count on, so training.profiling.HostSyncCensus counts the "
            "calls that would sync on a GPU, on this run's path (on CPU the torch reference kernels).",
        ]
    done = [r for r in runs if "summary" in r]
    lines += [
        "",
        "Per-stage ms per step (training.stages.STAGES, after warm-up):",
        "",
        "| run | " + " | ".join(STAGES) + " |",
        "|---|" + "---|" * len(STAGES),
    ]
    lines += [
        f"| {r['spec']['name']} | "
        + " | ".join(f"{r['summary']['stage_ms'][k]:.2f}" for k in STAGES)
        + " |"
        for r in done
    ]
    return [*lines, ""]


def _scaling_section(results: list[dict]) -> list[str]:
    lines = ["## W > 1 on one device, and the scaling projection", ""]
    for r in results:
        spec = r["spec"]
        lines.append(f"### {spec['name']}: W={spec['nproc']}, global batch {spec['batch']}")
        lines.append("")
        if "local_work" not in r:
            lines += [f"failed: see runs/{spec['name']}/log.txt", ""]
            continue
        lines += [*local_work_table(r["local_work"]), ""]
        lines += [r["projection"], "", f"Baseline: {r['baseline']}.", ""]
    return lines


def render(check: Check, budget_s: float, elapsed_s: float) -> str:
    """Writes DIR/report.md from the parts that have finished; returns its text."""
    meta = check.meta
    copy = meta["copy_bandwidth_gbps"]
    lines = [
        f"# GPU check: {meta['device']}",
        "",
        f"{meta['date']}, commit {meta['commit']}, torch {meta['torch']}, triton {meta['triton']}, "
        f"{meta['host']}. Measured copy bandwidth (read + write): {copy:,.1f} GB/s. "
        f"{elapsed_s:.0f} s so far of a {budget_s:.0f} s budget.",
        "",
        *_parts_section(check, budget_s),
    ]
    if check.kernels():
        lines += _kernels_section(check.kernels())
    if check.runs:
        lines += _runs_section(check.runs, copy)
    if check.scaling:
        lines += _scaling_section(check.scaling)
    if check.tests:
        lines += _tests_section(check.tests)
    text = "\n".join(lines) + "\n"
    tmp = os.path.join(check.out, "report.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(
        tmp, os.path.join(check.out, "report.md")
    )  # a cut-off run never leaves half a report
    return text
