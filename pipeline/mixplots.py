"""The mixture search's plots: leave-one-out predictions against observations, and the fitted surface."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.io import atomic_file


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def plot_fit(observed: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    """Each mixture's observed target against its leave-one-out prediction."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=120)
    ax.scatter(observed, predicted)
    ends = [min(observed.min(), predicted.min()), max(observed.max(), predicted.max())]
    ax.plot(ends, ends, color="gray", linestyle="--")
    ax.set_xlabel("observed target")
    ax.set_ylabel("predicted (leave-one-out)")
    ax.set_title("Proxy runs: predicted vs observed")
    _save(plt, fig, path)


def plot_surface(names: list[str], shares: np.ndarray, y: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                 best: np.ndarray, path: Path) -> None:
    """Two sources: the predicted target against the first share. Three or more: a ternary map of
    the first three sources' shares (the rest held at their mean)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.6, 4.6), dpi=120)
    if len(names) == 2:
        grid = np.linspace(0, 1, 201)
        ax.plot(grid, predict(np.stack([grid, 1 - grid], axis=1)), label="fit")
        ax.scatter(shares[:, 0], y, color="black", label="proxy runs")
        ax.axvline(best[0], color="red", linestyle=":", label="recommended")
        ax.set_xlabel(f"share of {names[0]}")
        ax.set_ylabel("target")
        ax.legend()
    else:
        rest = shares[:, 3:].mean(axis=0) if len(names) > 3 else np.zeros(0)
        free = 1 - rest.sum()
        a, b = np.meshgrid(np.linspace(0, 1, 121), np.linspace(0, 1, 121))
        keep = a + b <= 1
        tri = np.stack([a[keep], b[keep], 1 - a[keep] - b[keep]], axis=1) * free
        grid = np.column_stack([tri, np.tile(rest, (len(tri), 1))])
        x2, y2 = _ternary(tri / free)
        contour = ax.tricontourf(x2, y2, predict(grid), levels=20)
        fig.colorbar(contour, ax=ax, label="predicted target")
        px, py = _ternary(shares[:, :3] / shares[:, :3].sum(axis=1, keepdims=True))
        ax.scatter(px, py, color="white", edgecolor="black", label="proxy runs")
        bx, by = _ternary((best[:3] / best[:3].sum())[None, :])
        ax.scatter(bx, by, marker="*", s=160, color="red", label="recommended")
        for (x, yy), label in zip([(0, 0), (1, 0), (0.5, np.sqrt(3) / 2)], names[:3]):
            ax.annotate(label, (x, yy), textcoords="offset points", xytext=(-10, -14 if yy == 0 else 6))
        ax.set_axis_off()
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Predicted target across mixtures", pad=16)
    _save(plt, fig, path)


def _ternary(shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric (a, b, c) -> 2-D points of a triangle with a at (0, 0), b at (1, 0), c at the top."""
    return shares[:, 1] + shares[:, 2] / 2, shares[:, 2] * np.sqrt(3) / 2
