"""Piano rolls: binary [time, key] arrays of which keys sound at each time step.

Column ``k`` of a full roll is MIDI pitch ``LOWEST_MIDI_PITCH + k`` (88 keys, A0=21 .. C8=108).
:class:`PianoRolls` is a padded batch of such rolls; :func:`validate_piano_roll` checks one roll
and says exactly what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

NUM_PIANO_KEYS = 88
#: MIDI pitch of the first column (A0)
LOWEST_MIDI_PITCH = 21


def validate_piano_roll(array, *, num_keys: int = NUM_PIANO_KEYS, name: str = "piano roll") -> None:
    """Raise ValueError unless ``array`` is a non-empty [time, num_keys] array of 0s and 1s.

    ``array`` may be a numpy array or a torch tensor; ``name`` (a file or sequence name) is put
    in the message so the offending item can be found.
    """
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.ndim != 2:
        raise ValueError(
            f"{name}: expected a 2-d [time, key] piano roll, got shape {tuple(values.shape)}; "
            f"pass one sequence at a time (index the batch first)"
        )
    if values.shape[1] != num_keys:
        raise ValueError(
            f"{name}: expected {num_keys} keys (columns), got {values.shape[1]} "
            f"(shape {tuple(values.shape)}); pass num_keys= if the roll is restricted to fewer keys, "
            f"or transpose a [key, time] array"
        )
    if values.shape[0] == 0:
        raise ValueError(f"{name}: the piano roll has no time steps; drop empty sequences")
    if not np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
        raise ValueError(f"{name}: expected numbers, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
        steps, keys = np.nonzero(np.isnan(values))
        raise ValueError(
            f"{name}: {steps.size} NaN value(s), first at step {steps[0]}, key {keys[0]}; "
            f"a key is either on (1) or off (0): fix or drop the sequence"
        )
    bad = (values != 0) & (values != 1)
    if bad.any():
        steps, keys = np.nonzero(bad)
        raise ValueError(
            f"{name}: values must be 0 or 1, found {values[steps[0], keys[0]].item()!r} at step {steps[0]}, "
            f"key {keys[0]} ({steps.size} such value(s)); binarise the roll (e.g. roll > 0)"
        )


@dataclass(frozen=True)
class PianoRolls:
    """A padded batch of piano rolls.

    Attributes:
        sequences: float [N, T_max, K]; ``sequences[n, t, k] == 1`` iff key ``k`` sounds at step
            ``t`` of sequence ``n``; steps ``t >= lengths[n]`` are zero padding.
        lengths: long [N], the number of real steps of each sequence (all >= 1).
        names: N names (source file names), for error messages and bookkeeping.
        pitches: long [K], the MIDI pitch of each column (``21..108`` for a full 88-key roll).
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    names: list[str]
    pitches: torch.Tensor

    def __post_init__(self):
        n, _t_max, k = self.sequences.shape
        if self.lengths.shape != (n,) or len(self.names) != n or self.pitches.shape != (k,):
            raise ValueError(
                f"inconsistent PianoRolls: sequences {tuple(self.sequences.shape)}, lengths "
                f"{tuple(self.lengths.shape)}, {len(self.names)} names, pitches {tuple(self.pitches.shape)}"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_keys(self) -> int:
        return self.sequences.shape[-1]

    def to(self, dtype: torch.dtype) -> PianoRolls:
        """The same rolls with ``sequences`` cast to ``dtype`` (e.g. ``torch.float64``)."""
        return replace(self, sequences=self.sequences.to(dtype))

    def active_keys(self) -> torch.Tensor:
        """MIDI pitches (long [K_active], ascending) of the keys that sound at least once."""
        used = self.sequences.amax(dim=(0, 1)) > 0
        return self.pitches[used]

    def restrict_keys(self, pitches, *, allow_dropping_notes: bool = False) -> PianoRolls:
        """Keep only the columns of the MIDI ``pitches`` given (typically the training split's
        :meth:`active_keys`), in that order.

        Dropping a column that has notes would silently change the data (and any likelihood
        reported on it), so it raises unless ``allow_dropping_notes=True``.
        """
        pitches = torch.as_tensor(pitches, dtype=torch.long)
        column_of = {int(p): k for k, p in enumerate(self.pitches.tolist())}
        missing = [int(p) for p in pitches.tolist() if int(p) not in column_of]
        if missing:
            raise ValueError(f"restrict_keys: pitches {missing} are not columns of these rolls")
        columns = torch.tensor([column_of[int(p)] for p in pitches.tolist()], dtype=torch.long)
        if not allow_dropping_notes:
            kept = torch.zeros(self.num_keys, dtype=torch.bool)
            kept[columns] = True
            dropped = self.sequences[..., ~kept].sum(dim=(1, 2))
            if (dropped > 0).any():
                n = int(torch.nonzero(dropped > 0)[0, 0])
                lost = sorted(set(self.active_keys().tolist()) - set(pitches.tolist()))
                raise ValueError(
                    f"restrict_keys would drop notes on pitches {lost} (first in {self.names[n]!r}); "
                    f"pass allow_dropping_notes=True to drop them, or keep those pitches"
                )
        return replace(self, sequences=self.sequences[..., columns].contiguous(), pitches=pitches)
