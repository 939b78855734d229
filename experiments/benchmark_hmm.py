"""enumdist.DiscreteHMM vs pyro.distributions.DiscreteHMM; writes BENCHMARKS.md's "DiscreteHMM"
section (every ratio measured in one process, one thread).

    python experiments/benchmark_hmm.py            # full run (a few minutes on 2 cores)
    python experiments/benchmark_hmm.py --quick    # fewer repeats, a shorter long chain

Cases: the train chorales (N=260, T=193, K=45 keys, S=16, Bernoulli keys, float32, padded as
Pyro's needs) and a long chain (T=10^5, N=2, S=8, Normal observations, float32). Measured:
loss+gradient (``-log_prob(y).sum()`` and backward), ``filter`` (no gradient) and the MAP path
(Pyro's DiscreteHMM has none; Pyro's ``infer_discrete`` on the python-loop chorale model
stands in on the chorales).
"""

from __future__ import annotations

import argparse
import os
import sys

import pyro
import pyro.distributions as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import enumdist  # noqa: E402
from enumdist.data import load_chorales  # noqa: E402
from experiments import report  # noqa: E402
from experiments.bench_models import params as loop_params  # noqa: E402
from experiments.benchmark import decoded_states, timed  # noqa: E402

SECTION = "## DiscreteHMM"


def _hmm_params(num_states, obs_shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    init = torch.randn(num_states, generator=generator).requires_grad_()
    trans = (
        torch.randn(num_states, num_states, generator=generator) + 2 * torch.eye(num_states)
    ).requires_grad_()
    obs = torch.randn(obs_shape, generator=generator).requires_grad_()
    return init, trans, obs


def _contenders(make_obs, params, value, lengths=None):
    """Loss+grad, filter and MAP functions for both classes on one data set."""
    init, trans, obs_param = params

    def hmm(cls, **kw):
        return cls(init, trans, make_obs(obs_param), **kw)

    def loss_and_grad(cls, **kw):
        def step():
            for p in params:
                p.grad = None
            loss = -hmm(cls, **kw).log_prob(value).sum()
            loss.backward()
            return float(loss.detach())

        return step

    def filtered(cls):
        def run():
            with torch.no_grad():
                return hmm(cls).filter(value).probs

        return run

    def filter_errors(pyro_probs, ours_probs):
        """Each float32 filter's max abs error against Pyro's in float64."""
        with torch.no_grad():
            exact = (
                pd.DiscreteHMM(init.double(), trans.double(), make_obs(obs_param.double()))
                .filter(value.double())
                .probs
            )
        return (
            f"max abs error of probs vs float64: Pyro {(pyro_probs - exact).abs().max():.1e}, "
            f"enumdist {(ours_probs - exact).abs().max():.1e}"
        )

    def viterbi():
        return hmm(enumdist.DiscreteHMM, lengths=lengths).viterbi(value).states

    return loss_and_grad, filtered, filter_errors, viterbi


def run(quick):
    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    rows, notes = [], []

    def row(case, what, pyro_s, ours_s, extra=""):
        ratio = f"{pyro_s / ours_s:.1f}x" if isinstance(pyro_s, float) else ""
        p = f"{pyro_s:.4f}" if isinstance(pyro_s, float) else pyro_s
        rows.append((case, what, p, f"{ours_s:.4f}", ratio, extra))
        print(rows[-1], flush=True)

    # -- the chorales ---------------------------------------------------------------------------
    train = load_chorales("train", progress=False)
    train = train.restrict_keys(train.active_keys())
    y, lengths = train.sequences, train.lengths
    n, t, k = y.shape
    s = 16
    case = f"chorales N={n}, T={t}, K={k}, S={s}"

    def bernoulli_keys(logits):
        return pd.Bernoulli(logits=logits).to_event(1)

    params = _hmm_params(s, (s, k))
    loss_and_grad, filtered, filter_errors, viterbi = _contenders(
        bernoulli_keys, params, y, lengths
    )
    pyro_s, pyro_loss = timed(loss_and_grad(pd.DiscreteHMM), max(1, repeats // 2))
    ours_s, ours_loss = timed(loss_and_grad(enumdist.DiscreteHMM), repeats * 3)
    row(
        case,
        "loss+grad (padded, as Pyro's)",
        pyro_s,
        ours_s,
        f"loss rel. diff {abs(ours_loss - pyro_loss) / abs(pyro_loss):.1e}",
    )
    ragged_s, _ = timed(loss_and_grad(enumdist.DiscreteHMM, lengths=lengths), repeats * 3)
    row(case, "loss+grad with `lengths` (ragged; Pyro's has none)", "n/a", ragged_s)
    pyro_f, p_filter = timed(filtered(pd.DiscreteHMM), repeats)
    ours_f, o_filter = timed(filtered(enumdist.DiscreteHMM), repeats * 3)
    row(case, "filter", pyro_f, ours_f, filter_errors(p_filter, o_filter))
    # the MAP path: Pyro's stand-in is infer_discrete on the python-loop model, whose chain
    # starts from x_{-1} = 0: the same joint as a DiscreteHMM with a one-hot initial state
    pyro.clear_param_store()
    probs_x, probs_y = loop_params(k)
    init = torch.full((s,), -float("inf"))
    init[0] = 0.0
    with torch.no_grad():
        loop_hmm = enumdist.DiscreteHMM(
            init, probs_x.log(), pd.Bernoulli(probs_y).to_event(1), lengths=lengths
        )
    pyro_v, pyro_states = timed(lambda: decoded_states(pyro.infer.infer_discrete, y, lengths), 1)
    ours_v, ours_states = timed(lambda: loop_hmm.viterbi(y).states, repeats * 3)
    valid = torch.arange(t) < lengths[:, None]
    same = bool((pyro_states[valid] == ours_states[valid]).all())
    row(
        case,
        "MAP path (Pyro: infer_discrete on the python-loop model)",
        pyro_v,
        ours_v,
        f"identical states: {same}",
    )

    # -- a long chain ----------------------------------------------------------------------------
    t_long, n_long, s_long = (20_000 if quick else 100_000), 2, 8
    case = f"long chain N={n_long}, T={t_long}, S={s_long}"
    generator = torch.Generator().manual_seed(1)
    value = torch.randn(n_long, t_long, generator=generator) * 2

    def normal(loc):
        return pd.Normal(loc, 1.0)

    params = _hmm_params(s_long, (s_long,))
    loss_and_grad, filtered, filter_errors, viterbi = _contenders(normal, params, value)
    pyro_s, pyro_loss = timed(loss_and_grad(pd.DiscreteHMM), 1)
    ours_s, ours_loss = timed(loss_and_grad(enumdist.DiscreteHMM), repeats)
    row(
        case,
        "loss+grad",
        pyro_s,
        ours_s,
        f"loss rel. diff {abs(ours_loss - pyro_loss) / abs(pyro_loss):.1e}",
    )
    for method in ("sequential", "scan"):
        m_s, _ = timed(loss_and_grad(enumdist.DiscreteHMM, method=method), repeats)
        row(case, f"loss+grad, method={method!r} (default 'auto')", "", m_s)
    pyro_f, p_filter = timed(filtered(pd.DiscreteHMM), 1)
    ours_f, o_filter = timed(filtered(enumdist.DiscreteHMM), repeats)
    row(case, "filter", pyro_f, ours_f, filter_errors(p_filter, o_filter))
    ours_v, _ = timed(viterbi, repeats)
    row(case, "MAP path (Viterbi; Pyro's has none)", "n/a", ours_v)
    notes.append(
        "float32; times are the best of several repeats after a warm-up call "
        "(`experiments/benchmark.py`'s `timed`); ratio = Pyro / enumdist"
    )
    return rows, notes


HEADER = (
    "case",
    "measurement",
    "Pyro DiscreteHMM (s)",
    "enumdist.DiscreteHMM (s)",
    "speed-up",
    "notes",
)


def write_section(rows, notes, command, path, section=SECTION, header=HEADER, name="discrete_hmm"):
    """Write ``rows`` as the marked section ``name`` of ``path`` (see experiments/report.py),
    headed ``section``; the rest of the file is left alone."""
    lines = [
        section,
        "",
        f"Generated by `{command}`; torch.set_num_threads(1), torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}.",
        "",
        *[f"- {note}" for note in notes],
        "",
        f"| {' | '.join(header)} |",
        "|" + "---|" * len(header),
        *[f"| {' | '.join(map(str, r))} |" for r in rows],
        "",
    ]
    report.write_section(path, name, lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()
    rows, notes = run(args.quick)
    command = f"python experiments/benchmark_hmm.py{' --quick' if args.quick else ''}"
    write_section(rows, notes, command, args.out)
    print(f"wrote the {SECTION!r} section of {args.out}")


if __name__ == "__main__":
    main()
