"""The report's matplotlib figures (services.controller.report writes them beside report.html, for papers):
valid rate, accuracy, the loop's dynamics (C_t, Q_t), novelty histograms, creativity, and the proxy audit."""

from __future__ import annotations

import math
from pathlib import Path

from services.controller.creativity import creativity_figure, share_errorbar


def plots(out: Path, rows: list[dict], candidates: list[dict], threshold: float) -> list[Path]:
    """The per-cycle figures: valid rate, accuracy, loop dynamics, and the novelty histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, draw in (("valid_rate.png", _valid_rate_plot), ("accuracy.png", _accuracy_plot),
                       ("dynamics.png", _dynamics_plot)):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 3.5))
        draw(ax, rows, threshold)
        files.append(_save(fig, out / name))
    files.append(_save(_novelty_plot(candidates), out / "novelty.png"))
    if any(r["wiring_recorded"] for r in rows):
        files.append(_save(creativity_figure(rows), out / "creativity.png"))
    return files


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _valid_rate_plot(ax, rows: list[dict], threshold: float) -> None:
    share_errorbar(ax, rows, "valid_fraction", "valid_ci_low", "valid_ci_high")
    title = "Valid rate (Wilson 95 %)"
    if any(r["decided_before_training"] for r in rows):  # the two denominators differ: show both
        of_generated = [100 * r["valid_of_generated"] for r in rows]
        ax.plot([r["cycle"] for r in rows], of_generated, "s--", color="grey", label="of generated")
        ax.legend(fontsize=7)
        title = "Valid rate of trained (Wilson 95 %) and of generated"
    ax.set(xlabel="cycle", ylabel="valid %", title=title, ylim=(0, 100))


def _accuracy_plot(ax, rows: list[dict], threshold: float) -> None:
    cycles = [r["cycle"] for r in rows]

    def below(r: dict) -> float:
        return max(0.0, r["mean_accuracy"] - r["mean_ci_low"]) if not math.isnan(r["mean_ci_low"]) else 0

    def above(r: dict) -> float:
        return max(0.0, r["mean_ci_high"] - r["mean_accuracy"]) if not math.isnan(r["mean_ci_high"]) else 0

    ax.plot(cycles, [r["best_accuracy"] for r in rows], marker="^", label="best")
    spread = [[below(r) for r in rows], [above(r) for r in rows]]
    means = [r["mean_accuracy"] for r in rows]
    ax.errorbar(cycles, means, yerr=spread, marker="o", capsize=3, label="mean (t 95 %)")
    ax.plot(cycles, [r["median_accuracy"] for r in rows], marker="s", label="median")
    ax.axhline(threshold, color="grey", linestyle="--", label=f"τ = {threshold}")
    ax.set(xlabel="cycle", ylabel="first-epoch accuracy", title="Accuracy of valid candidates", ylim=(0, 1))
    ax.legend(fontsize=8)


def _dynamics_plot(ax, rows: list[dict], threshold: float) -> None:
    cycles = [r["cycle"] for r in rows]
    ax.plot(cycles, [r["elite_concentration"] for r in rows], marker="o", label="C_t = P(q ≥ τ)")
    ax.plot(cycles, [r["mean_quality"] for r in rows], marker="s", label="Q_t (mean quality)")
    ax.plot(cycles, [r["mean_quality_smoothed"] for r in rows], linestyle="--", label="Q_t, 3-cycle smoother")
    ax.set(xlabel="cycle", ylabel="share / accuracy", title="Loop dynamics (CT §4)", ylim=(0, 1))
    ax.legend(fontsize=8)


def _novelty_plot(candidates: list[dict]):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, key, title in ((axes[0], "nn_jaccard_train", "J_train"), (axes[1], "nn_jaccard_gen", "J_gen")):
        values = [c[key] for c in candidates if c[key] not in (None, "")]
        ax.hist(values, bins=20, range=(0, 1), color="tab:blue")
        ax.axvline(0.90, color="red", linestyle="--")
        ax.set(title=f"{title} (n = {len(values)})", xlabel="estimated Jaccard")
    axes[0].set_ylabel("candidates")
    return fig


def audit_plot(out: Path, audits: dict[str, dict]) -> Path:
    """First-epoch accuracy against the accuracy after promotion, every promoted candidate, by cycle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for cycle, audit in audits.items():
        if audit["points"]:
            ax.scatter(
                [p[1] for p in audit["points"]], [p[2] for p in audit["points"]], label=f"cycle {cycle}"
            )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    epochs = next(iter(audits.values()))["epochs"]
    ax.set(xlabel="first-epoch accuracy (the proxy)", ylabel=f"accuracy after {epochs} epochs",
           title="Proxy vs promoted", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "proxy_audit.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
