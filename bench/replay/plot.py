#!/usr/bin/env python3
"""Draws the frontiers `ferry pool replay --sweep --csv` wrote: one panel per trace, GPU-seconds
against p99 queueing delay, every setting as a dot and each policy's frontier as a step line
(the least GPU-seconds for that p99 or better). A policy is better where its line is lower.

    python3 bench/replay/plot.py OUT.png SWEEP.csv [SWEEP.csv ...]

Needs matplotlib (bench/gateway/.venv has it).
"""

import csv
import math
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ferry": "#1f6feb", "kpa": "#d1242f"}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, sweeps = pathlib.Path(sys.argv[1]), [pathlib.Path(p) for p in sys.argv[2:]]
    columns = min(3, len(sweeps))
    rows = math.ceil(len(sweeps) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(sweeps):]:
        axis.set_visible(False)
    for axis, path in zip(axes.flat, sweeps):
        points = list(csv.DictReader(path.open()))
        for policy, color in COLORS.items():
            mine = [p for p in points if p["policy"] == policy and p["dropped"] == "0"]
            axis.scatter([int(p["queue_p99_ms"]) / 1000 for p in mine], [float(p["gpu_seconds"]) for p in mine],
                         s=10, color=color, alpha=0.25, linewidths=0)
            frontier = sorted((int(p["queue_p99_ms"]) / 1000, float(p["gpu_seconds"])) for p in mine if p["on_frontier"] == "true")
            if frontier:
                xs, ys = zip(*frontier)
                axis.step(xs, ys, where="post", color=color, label=policy, linewidth=1.8)
                axis.scatter(xs, ys, s=18, color=color)
        axis.set_title(path.stem, fontsize=10)
        axis.set_xlabel("p99 queueing delay (s)")
        axis.set_ylabel("GPU-seconds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
