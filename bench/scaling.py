"""Project samples/s at W = 2, 4, 8 GPUs on one node and 2 x 8 across two, from a measured W > 1 run.

    python bench/local_work.py --nproc 2 --out DIR -- --config configs/tiny.toml   # measure (CPU or 1 GPU)
    python bench/scaling.py --run DIR [--baseline W1_RUN/summary.json]              # project

A projection, not a measurement. One step of a rank at W (per-GPU batch fixed: weak scaling) is
  step = local work + all-to-alls + all-reduce of replicated tables + exposed dense all-reduce
- local work: per stage (training.stages.STAGES but h2d, a side-stream copy), the stage time minus its
  communication, measured with W_m > 1 ranks on one machine (bench/local_work.py: every W > 1 step's work,
  dedup, exchange bookkeeping, unfused backward, merging, the largest over ranks) and taken as the same at
  every W: the per-rank batch, its distinct ids and the rows an owner serves do not grow with W.
- all-to-alls: the off-rank bytes of the embedding byte model at W_m (summary.json exchange_bytes_per_rank,
  embedding/byte_model.py, less the replicated tables' all-reduce) give each rank's send buffer
  S = bytes * W_m / (W_m - 1); at W, (W-1)/W of it crosses a link (nccl-tests' busbw definition):
  time = calls * latency + S (W-1)/W / busbw. Across nodes (G GPUs per node, one NIC each), (G-1)/W of S
  goes over NVLink and (W-G)/W over the NIC at once: S * max((G-1)/W / busbw, (W-G)/W / NIC).
- all-reduces (ring): calls * latency + 2 (W-1)/W * bytes / busbw; across nodes the ring runs at
  min(NVLink busbw, NIC). The dense one overlaps at most ``--overlap`` of the dense backward (default 0:
  fully exposed). calls: the collectives per step the probe counted (DDP buckets included).
Defaults (H100 SXM, NVLink 4 + NVSwitch, one 400 Gb/s NDR NIC per GPU), bytes/s:
- NVLink busbw 370 GB/s for all-to-all and all-reduce: per the NCCL team, NCCL's effective NVLink
  bandwidth on H100 after protocol overhead (~20% under the 450 GB/s line rate), seen as the busbw of
  collectives other than all-reduce and of ring all-reduce; NVLink SHARP all-reduce reaches ~480 GB/s
  busbw, at large (GB) buffers only, and the step's buffers are MBs
  (NVIDIA/nccl-tests#212, https://github.com/NVIDIA/nccl-tests/issues/212).
- NIC 46 GB/s: the low end of the 46-48 GB/s the NCCL team expects per 400 Gb/s NDR NIC
  (https://github.com/NVIDIA/nccl-tests/issues/290); an all-to-all does not aggregate several NICs
  (https://github.com/NVIDIA/nccl-tests/issues/267), hence one NIC per GPU.
- latency per collective: no published H100 figure found; assumed 30 us on NVLink, 60 us across nodes.
The local work includes the probe's extra device syncs (the lock hand-offs are counted as communication),
so the projection errs slow on local work, and fast wherever NCCL falls short of the figures above.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.stages import EXCHANGE_STAGES, OVERLAPPED_STAGES, STAGES  # noqa: E402

LABEL = "projection, not a measurement"
# defaults, cited in the module docstring: bytes/s, seconds, GPUs
LINK_DEFAULTS = {
    "nvlink_busbw": 370e9,
    "nic_bw": 46e9,
    "nvlink_latency": 30e-6,
    "nic_latency": 60e-6,
    "gpus_per_node": 8,
}
# (nodes, GPUs per node) of the table
WORLDS = ((1, 2), (1, 4), (1, 8), (2, 8))


def inputs_from_run(directory: str) -> dict:
    """What the projection takes from a bench/local_work.py run: local work, bytes and collectives."""
    lw = json.load(open(os.path.join(directory, "local_work.json")))
    if lw["world_size"] < 2:
        raise ValueError(
            f"{directory}: measured at W={lw['world_size']}; the W > 1 work needs W >= 2"
        )
    calls = {k: math.ceil(v["calls"] - 1e-6) for k, v in lw["collectives"].items()}
    in_stage = {k: v for k, v in lw["collectives"].items() if not k.startswith("outside_stages/")}
    replicated = sum(
        v["bytes"]
        for k, v in in_stage.items()
        if k.split("/")[0] in EXCHANGE_STAGES and k.endswith("/all_reduce")
    )
    return {
        "source": directory,
        "device": lw["device"],
        "measured_world": lw["world_size"],
        "measured_steps": lw["measured_steps"],
        "device_lock": lw["device_lock"],
        "dense_compiled": lw["dense_compiled"],
        "local_batch": lw["local_batch"],
        "local_stage_ms": lw["local_stage_ms"],
        "alltoall_offrank_bytes": max(lw["exchange_bytes_per_rank"] - replicated, 0.0),
        "alltoall_calls": sum(c for k, c in calls.items() if k in in_stage and "/all_to_all" in k),
        "replicated_bytes": replicated,
        "replicated_calls": sum(
            c for k, c in calls.items() if k.split("/")[0] in EXCHANGE_STAGES and "/all_reduce" in k
        ),
        "allreduce_bytes": lw["allreduce_bytes"],
        "allreduce_calls": max(calls.get("dense_bwd/ddp_allreduce", 1), 1),
    }


def alltoall_ms(inputs: dict, nodes: int, per_node: int, links: dict) -> float:
    """The step's all-to-alls at nodes x per_node GPUs, from the send buffer the byte model implies."""
    world, measured = nodes * per_node, inputs["measured_world"]
    send = inputs["alltoall_offrank_bytes"] * measured / (measured - 1)
    if nodes == 1:
        seconds = send * (world - 1) / world / links["nvlink_busbw"]
        latency = links["nvlink_latency"]
    else:
        on_node, off_node = (per_node - 1) / world, (world - per_node) / world
        seconds = send * max(on_node / links["nvlink_busbw"], off_node / links["nic_bw"])
        latency = links["nic_latency"]
    return 1e3 * (inputs["alltoall_calls"] * latency + seconds)


def allreduce_ms(nbytes: float, calls: int, nodes: int, per_node: int, links: dict) -> float:
    """Ring all-reduce of nbytes in ``calls`` collectives; across nodes the ring runs at its slowest link."""
    world = nodes * per_node
    busbw = links["nvlink_busbw"] if nodes == 1 else min(links["nvlink_busbw"], links["nic_bw"])
    latency = links["nvlink_latency"] if nodes == 1 else links["nic_latency"]
    return 1e3 * (calls * latency + 2 * (world - 1) / world * nbytes / busbw)


def project(inputs: dict, nodes: int, per_node: int, links: dict, overlap: float = 0.0) -> dict:
    """The projected step at nodes x per_node GPUs; ``overlap``: the share of the dense backward that can
    hide the dense all-reduce (0: none)."""
    local = inputs["local_stage_ms"]
    local_ms = sum(local[s] for s in STAGES if s not in OVERLAPPED_STAGES)
    a2a = alltoall_ms(inputs, nodes, per_node, links)
    replicated = allreduce_ms(
        inputs["replicated_bytes"], inputs["replicated_calls"], nodes, per_node, links
    )
    dense = allreduce_ms(
        inputs["allreduce_bytes"], inputs["allreduce_calls"], nodes, per_node, links
    )
    exposed = max(dense - overlap * local["dense_bwd"], 0.0)
    step = local_ms + a2a + replicated + exposed
    world = nodes * per_node
    return {
        "nodes": nodes,
        "world_size": world,
        "local_ms": local_ms,
        "alltoall_ms": a2a,
        "replicated_allreduce_ms": replicated,
        "dense_allreduce_ms": dense,
        "exposed_allreduce_ms": exposed,
        "step_ms": step,
        "samples_per_s": world * inputs["local_batch"] / step * 1e3,
        "samples_per_s_per_gpu": inputs["local_batch"] / step * 1e3,
    }


def baseline_from(path: str, local_batch: int) -> dict:
    """A W = 1 run's summary.json: its samples/s per GPU, if it had the same per-GPU batch."""
    s = json.load(open(path))
    if s["world_size"] != 1 or s["local_batch"] != local_batch:
        raise ValueError(
            f"{path}: W={s['world_size']}, batch {s['local_batch']}; the baseline must be a W = 1 run "
            f"at the projected per-GPU batch {local_batch}"
        )
    return {"path": path, "samples_per_s": s["samples_per_sec"], "device": s["device"]}


def format_inputs(inputs: dict, links: dict, overlap: float) -> list[str]:
    """The inputs of the projection, each with where it came from."""
    local = inputs["local_stage_ms"]
    stages = ", ".join(f"{s} {local[s]:.3f}" for s in STAGES if s not in OVERLAPPED_STAGES)
    return [
        f"Inputs ({LABEL}):",
        f"- local work, ms per step (measured: {inputs['source']}, W={inputs['measured_world']} ranks on "
        f"one {inputs['device']}, {inputs['measured_steps']} steps after warm-up, device lock "
        f"{'on' if inputs['device_lock'] else 'off'}, dense compile {inputs['dense_compiled']}): {stages}",
        f"- per-GPU batch {inputs['local_batch']} (weak scaling); h2d not counted (side stream)",
        *(
            [
                "- the local work was measured on a CPU: paired with GPU links, only the arithmetic holds"
            ]
            if inputs["device"] == "cpu"
            else []
        ),
        f"- all-to-all: {inputs['alltoall_offrank_bytes'] / 1e6:.3f} MB off-rank per step at W="
        f"{inputs['measured_world']} (embedding byte model), {inputs['alltoall_calls']} calls per step",
        f"- all-reduce: replicated tables {inputs['replicated_bytes'] / 1e6:.3f} MB in "
        f"{inputs['replicated_calls']} calls; dense gradients {inputs['allreduce_bytes'] / 1e6:.3f} MB in "
        f"{inputs['allreduce_calls']} DDP buckets, overlapping {overlap:.0%} of the dense backward",
        f"- links (assumed, sources in bench/scaling.py): NVLink busbw {links['nvlink_busbw'] / 1e9:.0f} GB/s, "
        f"NIC {links['nic_bw'] / 1e9:.0f} GB/s per GPU, latency {links['nvlink_latency'] * 1e6:.0f} us "
        f"(NVLink) / {links['nic_latency'] * 1e6:.0f} us (across nodes) per collective, "
        f"{links['gpus_per_node']} GPUs per node",
    ]


def format_table(rows: list[dict], baseline: dict | None) -> list[str]:
    """Markdown table of the projected steps; every number in it is projected, none measured."""
    vs = f"vs W=1 measured ({baseline['samples_per_s']:,.0f}/s)" if baseline else "vs W=1"
    lines = [
        f"Projected step ({LABEL}):",
        "",
        f"| GPUs | local ms | all-to-all ms | replicated all-reduce ms | dense all-reduce ms (exposed) | "
        f"step ms | samples/s | samples/s per GPU | per GPU {vs} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpus = (
            f"{r['world_size']}"
            if r["nodes"] == 1
            else f"{r['nodes']} x {r['world_size'] // r['nodes']}"
        )
        ratio = f"{r['samples_per_s_per_gpu'] / baseline['samples_per_s']:.1%}" if baseline else "-"
        lines.append(
            f"| {gpus} | {r['local_ms']:.3f} | {r['alltoall_ms']:.3f} | {r['replicated_allreduce_ms']:.3f} | "
            f"{r['dense_allreduce_ms']:.3f} ({r['exposed_allreduce_ms']:.3f}) | {r['step_ms']:.3f} | "
            f"{r['samples_per_s']:,.0f} | {r['samples_per_s_per_gpu']:,.0f} | {ratio} |"
        )
    return lines


def projection_report(run_dir: str, links: dict, overlap: float = 0.0, baseline: str = "") -> str:
    """The whole projection as markdown: inputs, then the table for WORLDS."""
    inputs = inputs_from_run(run_dir)
    base = baseline_from(baseline, inputs["local_batch"]) if baseline else None
    worlds = [(n, g) for n, g in WORLDS if g <= links["gpus_per_node"]]
    rows = [project(inputs, n, g, links, overlap) for n, g in worlds]
    return "\n".join([*format_inputs(inputs, links, overlap), "", *format_table(rows, base)])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="a bench/local_work.py result directory (W > 1)")
    p.add_argument(
        "--baseline", default="", help="summary.json of a W = 1 run at the same per-GPU batch"
    )
    d = LINK_DEFAULTS
    p.add_argument(
        "--nvlink-busbw", type=float, default=d["nvlink_busbw"] / 1e9, help="GB/s, all collectives"
    )
    p.add_argument("--nic-gbps", type=float, default=d["nic_bw"] * 8 / 1e9, help="Gb/s per GPU")
    p.add_argument(
        "--nvlink-latency-us", type=float, default=d["nvlink_latency"] * 1e6, help="per collective"
    )
    p.add_argument(
        "--nic-latency-us", type=float, default=d["nic_latency"] * 1e6, help="across nodes"
    )
    p.add_argument("--gpus-per-node", type=int, default=d["gpus_per_node"])
    p.add_argument(
        "--overlap",
        type=float,
        default=0.0,
        help="share of the dense backward hiding the all-reduce",
    )
    return p.parse_args(argv)


def links_from(args: argparse.Namespace) -> dict:
    return {
        "nvlink_busbw": args.nvlink_busbw * 1e9,
        "nic_bw": args.nic_gbps * 1e9 / 8,
        "nvlink_latency": args.nvlink_latency_us * 1e-6,
        "nic_latency": args.nic_latency_us * 1e-6,
        "gpus_per_node": args.gpus_per_node,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    print(projection_report(args.run, links_from(args), args.overlap, args.baseline))


if __name__ == "__main__":
    main()
