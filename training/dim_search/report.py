"""The search's report: report.json (everything), report.md (the tables) and search.png (score per field and
dim with the kept dims marked, parameters per table)."""

from __future__ import annotations

import os

from training import jsonio

STAGES = (
    ("pretrain", "pretrain (every table at the full dim)"),
    ("pruned", "pruned (pretrained network, dropped dims gated to 0, no training)"),
    ("retrain", "retrained (searched dims, warm-started from the kept dims)"),
)


def _metric(result: dict | None, key: str) -> str:
    return "—" if result is None or result.get(key) is None else f"{result[key]:.4f}"


def markdown(report: dict) -> str:
    p = report["parameters"]
    lines = [
        f"# Embedding dimension search: {report['config']}",
        "",
        f"`{report['command']}`",
        "",
        f"{report['date']}, device {report['device']}. Single-shot search (Qu et al., SIGIR 2022): "
        f"|dL/d alpha| of a gate on the pooled embeddings summed over {report['score_batches']} training "
        f"batches, normalized over all fields; a table's score per dim is the sum over its features. "
        f"Budget: keep {report['keep']} of the embedding parameters (rows x dims).",
        "",
        f"Parameters kept: {p['kept']:,} of {p['full']:,} ({p['kept'] / p['full']:.4f}; budget "
        f"{p['budget']:,}).",
        "",
        "| stage | eval AUC | eval logloss |",
        "|---|---|---|",
    ]
    for key, label in STAGES:
        stage = report["stages"].get(key)
        lines.append(f"| {label} | {_metric(stage, 'auc')} | {_metric(stage, 'logloss')} |")
    lines += [
        "",
        "| table | features | rows | dim | kept dims | parameters kept |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["tables"]:
        lines.append(
            f"| {t['name']} | {', '.join(t['features'])} | {t['rows']:,} | {t['dim']} / "
            f"{report['full_dim']} | {t['kept']} | {t['rows'] * t['dim']:,} |"
        )
    if report.get("retrain_fresh_dense") is not None:
        fresh = ", ".join(f"`{n}`" for n in report["retrain_fresh_dense"]) or "none"
        lines += [
            "",
            f"Dense parameters the retrain started fresh (the rest are the pretrain's): {fresh}.",
        ]
    lines += ["", "![score per field and dim](search.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: str) -> str | None:
    """search.png; None when matplotlib is not installed (the report says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fields = [f for t in report["tables"] for f in t["features"]]
    kept = [t["kept"] for t in report["tables"] for _ in t["features"]]
    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(12, 0.35 * len(fields) + 2.5), width_ratios=(3, 1)
    )
    image = ax.imshow(report["scores"], aspect="auto", cmap="viridis")
    for i, dims in enumerate(kept):
        ax.scatter(dims, [i] * len(dims), marker="s", s=14, facecolors="none", edgecolors="white")
    ax.set_yticks(range(len(fields)), fields, fontsize=8)
    ax.set_xlabel("dimension (white squares: kept)")
    fig.colorbar(image, ax=ax, label="normalized |dL/d alpha|")
    names = [t["name"] for t in report["tables"]]
    bars.barh(names, [t["rows"] * report["full_dim"] for t in report["tables"]], color="lightgray")
    bars.barh(names, [t["rows"] * t["dim"] for t in report["tables"]], color="tab:blue")
    bars.set_xlabel("parameters: full (gray), kept (blue)")
    bars.invert_yaxis()
    stages = report["stages"]
    title = f"keep {report['keep']}: " + ", ".join(
        f"{k} AUC {_metric(stages.get(k), 'auc')}" for k, _ in STAGES
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict, out: str) -> None:
    report["plot"] = plot(report, os.path.join(out, "search.png"))
    with open(os.path.join(out, "report.json"), "w") as f:
        jsonio.dump(report, f, indent=1)
    text = markdown(report)
    if report["plot"] is None:
        text += "\n(no plot: matplotlib is not installed)\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
