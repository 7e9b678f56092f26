"""curve.png: training and validation loss against steps, from metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_curve(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], label="train")
    valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
    if valid:
        ax.plot(*zip(*valid, strict=True), label="validation")
    back = [(r["step"], r["valid_loss_backward"]) for r in rows if r.get("valid_loss_backward")]
    if back:
        ax.plot(*zip(*back, strict=True), label="validation, backward", linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out / ".curve.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out / "curve.png")
