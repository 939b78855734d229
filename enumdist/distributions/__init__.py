"""Distributions backed by enumdist's exact kernels (drop-ins for Pyro's)."""

from enumdist.distributions.hmm import DiscreteHMM, HMMPath

__all__ = ["DiscreteHMM", "HMMPath"]
