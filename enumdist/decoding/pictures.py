"""Pictures of a decoded run (matplotlib, Agg backend; each file written atomically)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from enumdist.decoding.files import atomic_path  # noqa: E402


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def piano_roll_with_states(roll: torch.Tensor, states: dict[str, torch.Tensor], path: Path,
                           title: str = "") -> Path:
    """``roll`` ``[T, K]`` (0/1) above one colour strip per hidden chain (``states[c]`` ``[T]``)."""
    figure, axes = plt.subplots(1 + len(states), 1, sharex=True, squeeze=False,
                                figsize=(10, 4 + 0.5 * len(states)),
                                gridspec_kw={"height_ratios": [6] + [1] * len(states)})
    axes = axes[:, 0]
    axes[0].imshow(roll.T.cpu(), aspect="auto", origin="lower", cmap="Greys", interpolation="none")
    axes[0].set_ylabel("key")
    axes[0].set_title(title)
    for axis, (name, chain) in zip(axes[1:], states.items()):
        axis.imshow(chain.reshape(1, -1).cpu(), aspect="auto", cmap="tab20", interpolation="none")
        axis.set_yticks([0], [name])
    axes[-1].set_xlabel("time step")
    return _save(figure, path)


def transition_heatmaps(matrices: dict[str, torch.Tensor], path: Path) -> Path:
    """One heat map per chain; extra leading dims (conditioning chains) are averaged out."""
    figure, axes = plt.subplots(1, len(matrices), squeeze=False,
                                figsize=(4.5 * len(matrices), 4))
    for axis, (name, matrix) in zip(axes[0], matrices.items()):
        matrix = matrix.reshape(-1, *matrix.shape[-2:]).mean(0).cpu()
        image = axis.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
        axis.set_title(f"p({name}_t | {name}_t-1)")
        axis.set_xlabel(f"{name}_t")
        axis.set_ylabel(f"{name}_t-1")
        figure.colorbar(image, ax=axis)
    return _save(figure, path)


def loss_curve(history_csv: Path, path: Path) -> Path:
    """Training loss per observation against step, from ``train_history.csv``."""
    with open(history_csv, newline="") as file:
        rows = [r for r in csv.DictReader(file) if r.get("loss_per_obs") not in (None, "")]
    if not rows:
        raise ValueError(f"{history_csv} has no rows with columns step, loss_per_obs")
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([float(r["step"]) for r in rows], [float(r["loss_per_obs"]) for r in rows])
    axis.set_xlabel("step")
    axis.set_ylabel("loss per observation (nats)")
    axis.set_title("training loss")
    return _save(figure, path)
