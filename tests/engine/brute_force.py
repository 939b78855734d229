"""Brute-force posteriors: enumerate every joint assignment and weigh it by the model's log-joint."""

import itertools

import torch
from pyro import poutine


def joint_posterior(model, args, sites: dict):
    """``sites``: name -> (shape, num_states). Returns (assignments, probabilities)."""
    names = list(sites)
    cells = [(n, idx) for n in names for idx in itertools.product(*[range(s) for s in sites[n][0]])]
    assignments, log_joint = [], []
    for states in itertools.product(*[range(sites[n][1]) for n, _ in cells]):
        values = {n: torch.zeros(sites[n][0], dtype=torch.long) for n in names}
        for (n, idx), s in zip(cells, states):
            values[n][idx] = s
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args)
        log_joint.append(trace.log_prob_sum().detach())
        assignments.append(values)
    return assignments, torch.softmax(torch.stack(log_joint), 0)
