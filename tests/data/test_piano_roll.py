import numpy as np
import pytest
import torch

from enumdist.data.piano_roll import PianoRolls, validate_piano_roll


def test_valid_roll_passes():
    validate_piano_roll(np.eye(88)[:5])
    validate_piano_roll(torch.zeros(3, 46), num_keys=46)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 87)), r"bwv9\.mxl: expected 88 keys \(columns\), got 87.*num_keys="),
        (np.zeros((0, 88)), r"bwv9\.mxl: the piano roll has no time steps"),
        (np.zeros((2, 4, 88)), r"bwv9\.mxl: expected a 2-d \[time, key\] piano roll"),
        (
            np.where(np.eye(88)[:3] > 0, np.nan, 0.0),
            r"bwv9\.mxl: 3 NaN value\(s\), first at step 0, key 0",
        ),
        (
            np.full((2, 88), 0.5),
            r"bwv9\.mxl: values must be 0 or 1, found 0\.5 at step 0, key 0.*binarise",
        ),
    ],
)
def test_each_problem_has_a_clear_message(array, message):
    with pytest.raises(ValueError, match=message):
        validate_piano_roll(array, name="bwv9.mxl")


def _rolls():
    sequences = torch.zeros(2, 3, 4)
    sequences[0, 0, 1] = sequences[1, 2, 3] = 1
    return PianoRolls(sequences, torch.tensor([3, 3]), ["a", "b"], torch.arange(60, 64))


def test_active_and_restricted_keys():
    rolls = _rolls()
    assert rolls.active_keys().tolist() == [61, 63]
    small = rolls.restrict_keys(rolls.active_keys())
    assert small.sequences.shape == (2, 3, 2) and small.pitches.tolist() == [61, 63]
    assert small.sequences.sum() == 2 and small.to(torch.float64).sequences.dtype == torch.float64


def test_restricting_away_notes_needs_consent():
    rolls = _rolls()
    with pytest.raises(
        ValueError, match=r"drop notes on pitches \[63\] \(first in 'b'\).*allow_dropping_notes"
    ):
        rolls.restrict_keys([61])
    assert rolls.restrict_keys([61], allow_dropping_notes=True).sequences.sum() == 1
    with pytest.raises(ValueError, match=r"pitches \[99\] are not columns"):
        rolls.restrict_keys([99])
