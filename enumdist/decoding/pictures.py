"""Pictures of a decoded run (matplotlib, Agg backend; each file written atomically).

Each picture is built by a ``*_figure`` function (what tests inspect) and written by
:func:`save`. States are drawn with one fixed colour per state number (:func:`state_colours`),
so the same state has the same colour in every picture of a run. The run's loss picture is
drawn by training (``enumdist.pipeline.callbacks.TrainHistory``), not here.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch

from enumdist.atomic import atomic_path
from enumdist.data.piano_roll import LOWEST_MIDI_PITCH, NUM_PIANO_KEYS

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
#: up to this many states get a legend entry each; more get a colour bar
MAX_LEGEND_STATES = 20


def save(figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def pitch_name(midi: int) -> str:
    """Scientific pitch name of a MIDI pitch (60 -> ``C4``, 21 -> ``A0``)."""
    return f"{PITCH_CLASSES[midi % 12]}{midi // 12 - 1}"


def key_labels(num_keys: int) -> list[str]:
    """Names of a roll's key columns: pitch names for a full 88-key roll (column ``k`` is MIDI
    ``LOWEST_MIDI_PITCH + k``), else ``key k`` (a restricted roll does not say its pitches)."""
    if num_keys == NUM_PIANO_KEYS:
        return [pitch_name(LOWEST_MIDI_PITCH + k) for k in range(num_keys)]
    return [f"key {k}" for k in range(num_keys)]


def state_colours(num_states: int) -> ListedColormap:
    """One colour per state number ``0 .. num_states - 1``."""
    base = plt.get_cmap("tab20" if num_states <= 20 else "viridis")
    colours = (
        [base(i) for i in range(num_states)]
        if num_states <= 20
        else [base(i / max(num_states - 1, 1)) for i in range(num_states)]
    )
    return ListedColormap(colours, name=f"states{num_states}")


def _state_norm(num_states: int) -> BoundaryNorm:
    return BoundaryNorm([s - 0.5 for s in range(num_states + 1)], num_states)


def _integer_ticks(axis, which: str, count: int) -> None:
    """Ticks at the state numbers ``0 .. count - 1`` (every one, or about ten of them)."""
    ticks = list(range(0, count, max(1, math.ceil(count / 10))))
    (axis.set_xticks if which == "x" else axis.set_yticks)(ticks)


def played_keys(roll: torch.Tensor) -> tuple[int, int]:
    """``(low, high)``: the key columns of ``roll`` ``[T, K]`` ever played, plus one on each side
    (all of them for a silent roll)."""
    played = roll.sum(0).nonzero().flatten()
    if not len(played):
        return 0, roll.shape[1] - 1
    return max(int(played.min()) - 1, 0), min(int(played.max()) + 1, roll.shape[1] - 1)


def piano_roll_figure(
    roll: torch.Tensor, states: dict[str, torch.Tensor], num_states: dict[str, int], title: str = ""
):
    """``roll`` ``[T, K]`` (0/1) above one colour strip per hidden chain (``states[c]`` ``[T]``).

    The key axis is cut to the keys ever played (plus one on each side) and labelled with pitch
    names (natural notes only, to stay legible); each strip has a legend (or a colour bar, for
    many states) of its state colours.
    """
    roll = roll.detach().cpu().float()
    figure, axes = plt.subplots(
        1 + len(states),
        1,
        sharex=True,
        squeeze=False,
        figsize=(11, 4.5 + 0.6 * len(states)),
        gridspec_kw={"height_ratios": [6] + [1] * len(states)},
    )
    axes = axes[:, 0]
    _draw_roll(axes[0], roll, title)
    for axis, (name, chain) in zip(axes[1:], states.items()):
        _draw_state_strip(figure, axis, name, chain, num_states[name])
    axes[-1].set_xlabel("time step")
    return figure


def _draw_roll(axis, roll: torch.Tensor, title: str) -> None:
    """The played keys of ``roll`` ``[T, K]`` in black, on pitch-name (or key-number) ticks."""
    labels = key_labels(roll.shape[1])
    low, high = played_keys(roll)
    axis.imshow(
        roll[:, low : high + 1].T,
        aspect="auto",
        origin="lower",
        cmap="Greys",
        interpolation="none",
        vmin=0,
        vmax=1,
        extent=(-0.5, roll.shape[0] - 0.5, low - 0.5, high + 0.5),
    )
    ticks = [k for k in range(low, high + 1) if "#" not in labels[k]]
    if len(ticks) > 30:  # many keys: octaves only
        ticks = [k for k in ticks if labels[k].startswith("C")] or ticks[:: len(ticks) // 10]
    axis.set_yticks(ticks, [labels[k] for k in ticks], fontsize=7)
    axis.set_ylabel("pitch" if roll.shape[1] == NUM_PIANO_KEYS else "key")
    axis.set_title(title)


def _draw_state_strip(figure, axis, name: str, chain: torch.Tensor, count: int) -> None:
    """Chain ``name``'s states ``[T]`` as one coloured strip, with a legend of its ``count``
    state colours (a colour bar beyond :data:`MAX_LEGEND_STATES`)."""
    colours = state_colours(count)
    image = axis.imshow(
        chain.reshape(1, -1).cpu(),
        aspect="auto",
        cmap=colours,
        norm=_state_norm(count),
        interpolation="none",
    )
    axis.set_yticks([0], [name])
    if count <= MAX_LEGEND_STATES:
        axis.legend(
            handles=[Patch(color=colours(s), label=f"{name}={s}") for s in range(count)],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=6,
            ncol=math.ceil(count / 8),
            title=f"state {name}",
            title_fontsize=7,
            borderaxespad=0,
        )
    else:
        figure.colorbar(image, ax=axis, label=f"state {name}", pad=0.01)


def marginals_figure(
    marginals: dict[str, torch.Tensor],
    states: dict[str, torch.Tensor],
    title: str = "",
    xlabel: str = "time step",
    joined: bool = True,
):
    """Posterior marginals ``p(c_t = s | x)``, one panel per state ``c`` (``marginals[c]``
    ``[T, S]``: positions of one item, or items), with the decoded ``states[c]`` ``[T]`` on top
    (``joined``: as a path)."""
    figure, axes = plt.subplots(
        len(marginals), 1, sharex=True, squeeze=False, figsize=(11, 1.0 + 2.2 * len(marginals))
    )
    for axis, (name, probs) in zip(axes[:, 0], marginals.items()):
        probs = probs.detach().cpu().float()
        image = axis.imshow(
            probs.T,
            aspect="auto",
            origin="lower",
            cmap="magma",
            vmin=0,
            vmax=1,
            interpolation="none",
        )
        axis.plot(
            range(len(states[name])),
            states[name].cpu(),
            color="cyan",
            lw=0.8,
            ls="-" if joined else "none",
            marker=".",
            ms=3,
            label="decoded",
        )
        axis.set_ylabel(f"state {name}")
        _integer_ticks(axis, "y", probs.shape[1])
        axis.legend(loc="upper right", fontsize=7)
        figure.colorbar(image, ax=axis, label=f"p({name}_t = s | x)", pad=0.01)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(xlabel)
    return figure


def transition_figure(
    matrices: dict[str, torch.Tensor], conditions: dict[str, tuple[str, ...]] | None = None
):
    """One heat map of ``p(c_t | c_t-1)`` per chain ``c`` (``matrices[c]`` ``[..., D, D]``).

    Leading dims are the other variables the transition is conditioned on (``conditions[c]``
    names them, e.g. ``("x_{t-2}",)`` for a second-order chain): each of their values gets its
    own panel -- nothing is averaged over.
    """
    conditions = conditions or {}
    panels = []
    for name, matrix in matrices.items():
        matrix = matrix.detach().cpu()
        leading = tuple(matrix.shape[:-2])
        given = conditions.get(name) or tuple(f"dim{j}" for j in range(len(leading)))
        if len(given) != len(leading):
            raise ValueError(
                f"transition of chain {name!r} has leading dims {leading} but "
                f"conditions name {given}"
            )
        for values in (
            torch.cartesian_prod(*[torch.arange(n) for n in leading])
            .reshape(-1, len(leading))
            .tolist()
            if leading
            else [[]]
        ):
            condition = "".join(f", {g}={v}" for g, v in zip(given, values))
            panels.append((name, condition, matrix[tuple(values)]))
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, squeeze=False, figsize=(4.2 * columns, 3.8 * rows))
    for axis, (name, condition, matrix) in zip(axes.flat, panels):
        image = axis.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
        axis.set_title(f"p({name}_t | {name}_t-1{condition})", fontsize=9)
        axis.set_xlabel(f"{name}_t")
        axis.set_ylabel(f"{name}_t-1")
        _integer_ticks(axis, "x", matrix.shape[1])
        _integer_ticks(axis, "y", matrix.shape[0])
        figure.colorbar(image, ax=axis)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure
