"""``EnumELBO``: a drop-in for ``pyro.infer.TraceEnum_ELBO`` -- same numbers, own elimination.

It takes ``TraceEnum_ELBO``'s keyword arguments and offers ``loss``, ``differentiable_loss`` and
``loss_and_grads`` (so it is the ``loss`` of ``pyro.infer.SVI`` unchanged), plus
``compute_marginals`` and ``sample_posterior``. With ``shard_plates=[...]`` and
``torch.distributed`` initialised, each rank passes its own slice of those plates and every
rank gets the full-data result of each of them (see :mod:`enumdist.engine.sharding` for how
that composes with DDP).
"""

from __future__ import annotations

import warnings

import pyro.poutine as poutine
import torch
from pyro.distributions.util import is_validation_enabled, validation_enabled
from pyro.infer.elbo import ELBO

from enumdist.engine import guide_enum
from enumdist.engine import loss as loss_stage
from enumdist.engine import trace as trace_stage
from enumdist.engine.arguments import check_distribution_arguments
from enumdist.engine.errors import UnsupportedEnumerationError
from enumdist.engine.handlers import AsParallel
from enumdist.engine.memory import default_memory_budget
from enumdist.engine.observations import forget_checked_observations
from enumdist.engine.plates import plates_for
from enumdist.engine.sequential import sequential_elbo
from enumdist.engine.site_checks import check_model_guide_match

#: the values of ``EnumELBO(validate=...)``
VALIDATE_MODES = (True, "first", False)


class EnumELBO(ELBO):
    """Exact enumeration ELBO, optionally sharded across ranks.

    :param max_plate_nesting: as in Pyro; enumeration dims start left of it.
    :param shard_plates: names of plates whose data is split across the ranks of
        ``process_group``; plate products over them are all-reduced.
    :param process_group: the ``torch.distributed`` group to shard over (default: world).
    :param memory_budget: bytes; an elimination that would build a larger tensor is refused
        before it allocates (default: half the physical memory).
    :param validate: ``True`` (default): check, on every call, what Pyro's validation checks --
        every site's shape against its plates, ``pyro.markov`` dim conflicts, the model/guide
        agreement -- and the observations (NaN, support); and, while ``pyro.enable_validation``
        is on (Pyro's default), every distribution's arguments (``Categorical(probs)`` on the
        simplex, ...). ``"first"``: the same, except that distribution arguments are checked on
        the first call and on any call whose loss is not finite only, and a data tensor found
        valid is not checked again until its version counter moves (an opt-out of a few
        percent of a step; data changed through ``.data`` or a numpy view goes unseen).
        ``False``: no checks of enumdist's own (torch's follow ``pyro.enable_validation``).

    Distribution arguments are checked as Pyro checks them, but stacked: the programs are traced
    with torch's per-distribution checks off and :mod:`enumdist.engine.arguments` checks the same
    constraints in one op per group of same-shaped parameters afterwards (torch's checks cost a
    quarter of a step on a long python-loop HMM; these cost a few percent).
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        max_iarange_nesting=None,
        vectorize_particles=False,
        strict_enumeration_warning=True,
        ignore_jit_warnings=False,
        jit_options=None,
        retain_graph=None,
        tail_adaptive_beta=-1.0,
        *,
        shard_plates=(),
        process_group=None,
        memory_budget=None,
        validate=True,
    ):
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            max_iarange_nesting=max_iarange_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            tail_adaptive_beta=tail_adaptive_beta,
        )
        self.shard_plates = tuple(shard_plates)
        self.process_group = process_group
        self.memory_budget = default_memory_budget() if memory_budget is None else memory_budget
        if validate not in VALIDATE_MODES:
            raise ValueError(f"EnumELBO(validate={validate!r}): expected one of {VALIDATE_MODES}")
        self.validate = validate
        self.last_problem = None
        self._last_call = (plates_for(), ())  # (plate back end, traces) of the last call
        self._arguments_checked = False
        #: bytes all-reduced by the last call (messages, and gradients in loss_and_grads)
        self.last_comm_bytes = 0

    # -- plumbing ---------------------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        """Pyro's ELBO hook (used by its max_plate_nesting guess): the enumerated traces."""
        return trace_stage.run_traces(model, guide, args, kwargs, self.max_plate_nesting)

    def _plates_backend(self, adjoint="sum"):
        """This call's plate back end (local, single-process shard check, or sharded)."""
        return plates_for(self.shard_plates, self.process_group, adjoint=adjoint)

    def _prepare(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        if self.vectorize_particles:
            guide = self._vectorized_num_particles(guide)
            model = self._vectorized_num_particles(model)
        return model, guide

    def trace_problem(self, model, guide, args, kwargs, traces=None):
        """Trace stage: run guide and model, return the :class:`EnumProblem`."""
        model_trace, guide_trace = traces or trace_stage.run_traces(
            model, guide, args, kwargs, self.max_plate_nesting
        )
        if self.validate:
            if is_validation_enabled():  # Pyro's model/guide rules hold under its validation
                check_model_guide_match(
                    model_trace,
                    guide_trace,
                    self.max_plate_nesting,
                    trace_stage.model_sequential_sites(model_trace, guide_trace),
                )
            if self._check_arguments_now():
                check_distribution_arguments((guide_trace, model_trace))
        self._warn_if_nothing_enumerated(model_trace, guide_trace)
        problem = trace_stage.build_problem(
            model_trace,
            guide_trace,
            self.max_plate_nesting,
            validate=bool(self.validate),
            memory_budget=self.memory_budget,
            remember_valid_data=self.validate == "first",
        )
        return problem

    def _warn_if_nothing_enumerated(self, model_trace, guide_trace):
        """Pyro's rule: under validation, with ``strict_enumeration_warning``, when no sample
        site of either program asks for enumeration."""
        if not (self.strict_enumeration_warning and is_validation_enabled()):
            return
        for trace in (guide_trace, model_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample" and site["infer"].get("enumerate"):
                    return
        warnings.warn(
            "EnumELBO found no sample sites configured for enumeration. Mark discrete sites "
            "with infer={'enumerate': 'parallel'} (or @config_enumerate), or use Trace_ELBO.",
            stacklevel=2,
        )

    def _particle_elbo(self, model, guide, args, kwargs):
        plates = self._plates_backend()

        def trace():
            rng_state = torch.random.get_rng_state()
            with validation_enabled(False):  # distributions' checks: stacked, in trace_problem
                traces = trace_stage.run_traces(model, guide, args, kwargs, self.max_plate_nesting)
            sequential = trace_stage.model_sequential_sites(*traces)
            if guide_enum.has_sequential_sites(traces[1]):
                if sequential:
                    raise UnsupportedEnumerationError(
                        f"model sites {sequential} use sequential enumeration while the guide "
                        "has sequentially enumerated sites too; use infer={'enumerate': "
                        "'parallel'} on one side."
                    )
                torch.random.set_rng_state(rng_state)  # re-run as Pyro does, same draws
                with validation_enabled(False):
                    runs = guide_enum.sequential_guide_traces(
                        trace_stage.run_traces, model, guide, args, kwargs, self.max_plate_nesting
                    )
                return [self.trace_problem(model, guide, args, kwargs, run) for run in runs]
            if sequential:
                return sequential, traces
            return self.trace_problem(model, guide, args, kwargs, traces)

        traced = plates.guarded(trace)
        if isinstance(traced, tuple):
            sequential, traces = traced
            value = sequential_elbo(
                self.trace_problem,
                model,
                guide,
                args,
                kwargs,
                sequential,
                traces,
                plates,
                self.memory_budget,
            )
            self.last_comm_bytes = plates.bytes_reduced
            self._last_call = (plates, traces)
            return value
        problems = traced if isinstance(traced, list) else [traced]
        total = None
        for problem in problems:  # several for sequentially enumerated guide sites
            plates.prepare(problem)
            self.last_problem = problem
            value = loss_stage.elbo(problem, plates, self.memory_budget)
            total = value if total is None else total + value
        self._last_call = (plates, (problems[0].model_trace, problems[0].guide_trace))
        self.last_comm_bytes = plates.bytes_reduced
        return total

    def _check_arguments_now(self) -> bool:
        """Check distribution arguments on this call? Always under Pyro's validation, except
        after a first clean call with ``validate="first"``."""
        if not is_validation_enabled():
            return False
        return not (self.validate == "first" and self._arguments_checked)

    def _elbo(self, model, guide, args, kwargs):
        model, guide = self._prepare(model, guide, args, kwargs)
        checked = self._arguments_checked
        total = 0.0
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            total = total + self._particle_elbo(model, guide, args, kwargs)
        total = total / self.num_particles if self.num_particles != 1 else total
        if (
            self.validate == "first"
            and checked
            and torch.is_tensor(total)
            and not bool(torch.isfinite(total))
        ):
            self._arguments_checked = False  # run again with all checks: they name the culprit
            forget_checked_observations()
            return self._elbo(model, guide, args, kwargs)
        self._arguments_checked = is_validation_enabled()
        return total

    # -- the TraceEnum_ELBO interface -------------------------------------------------------

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO as a float (no graph is kept)."""
        with torch.no_grad():
            return -float(self._elbo(model, guide, args, kwargs))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO as a differentiable scalar tensor."""
        elbo = self._elbo(model, guide, args, kwargs)
        if not torch.is_tensor(elbo) or not elbo.requires_grad:
            raise ValueError(f"ELBO cannot be differentiated: {elbo}")
        return -elbo

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Backpropagate the negative ELBO into parameter ``.grad``s; return it as a float.

        Sharded: the backward pass through the all-reduce sums gradients over ranks; they are
        then averaged over ranks here (what DDP would do), which leaves on every rank exactly
        the gradient of the full-data loss.
        """
        loss = -self._elbo(model, guide, args, kwargs)
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
            plates, traces = self._last_call
            if plates.sharded:
                self.last_comm_bytes += plates.average_gradients(trace_stage.trace_params(*traces))
        return float(loss.detach()) if torch.is_tensor(loss) else float(loss)

    def _trace_all_parallel(self, method, model, guide, args, kwargs):
        """A function tracing the problem for the posterior query ``method``: model-side
        sequential sites made parallel, blocked from any enclosing trace (these are internal
        runs), a guide that enumerates refused."""
        from enumdist.engine.marginals import refuse_guide_enumeration

        def trace():
            with poutine.block():
                traces = trace_stage.run_traces(
                    AsParallel()(model), guide, args, kwargs, self.max_plate_nesting
                )
                refuse_guide_enumeration(traces[1], method)
                return self.trace_problem(model, guide, args, kwargs, traces)

        return trace

    def _check_one_particle(self, method):
        if self.num_particles != 1:
            raise NotImplementedError(
                f"EnumELBO.{method}() is not compatible with multiple particles (as in "
                f"TraceEnum_ELBO); use num_particles=1."
            )

    def compute_marginals(self, model, guide, *args, **kwargs):
        """Exact posterior marginals of every model-enumerated site, as ``TraceEnum_ELBO``'s:
        ``{site: distribution}`` (the site's own type for ``Bernoulli`` and
        ``OneHotCategorical``, else ``Categorical``). Sharded, every rank gets the full-data
        marginals (of its own items, for variables inside a shard plate)."""
        from enumdist.engine.marginals import compute_marginals

        self._check_one_particle("compute_marginals")
        model, guide = self._prepare(model, guide, args, kwargs)
        trace = self._trace_all_parallel("compute_marginals", model, guide, args, kwargs)
        return compute_marginals(trace, self._plates_backend(adjoint="own"), self.memory_budget)

    def sample_posterior(self, model, guide, *args, **kwargs):
        """One exact draw from the joint posterior of every model-enumerated site, as
        ``TraceEnum_ELBO.sample_posterior``: runs ``model`` (replayed against a guide draw) with
        those sites set to the draw and returns what the model returns. Sharded, variables
        outside the shard plates agree on every rank."""
        from enumdist.engine.discrete import sample_posterior

        self._check_one_particle("sample_posterior")
        model, guide = self._prepare(model, guide, args, kwargs)
        trace = self._trace_all_parallel("sample_posterior", model, guide, args, kwargs)
        with warnings.catch_warnings():  # as Pyro's sample_posterior: the guide may omit them
            warnings.filterwarnings("ignore", "Found vars in model but not guide")
            return sample_posterior(
                trace, model, args, kwargs, self._plates_backend(), self.memory_budget
            )


class JitEnumELBO(EnumELBO):
    """The name to switch to from ``pyro.infer.JitTraceEnum_ELBO``: the same numbers, no JIT.

    Pyro's ``JitTraceEnum_ELBO`` compiles its loss with ``torch.jit.trace`` to cut the Python
    overhead of its elimination; compiling takes seconds to minutes on the first call (8-29 s on
    the chorale HMM), and the compiled graph is only valid while the model's structure and the
    arguments' shapes stay the same. ``EnumELBO`` plans and runs its elimination eagerly at less
    cost than a compiled Pyro step (``python experiments/bench_jit_alias.py`` measures one step
    of each), so this class *is* ``EnumELBO``: it accepts ``JitTraceEnum_ELBO``'s arguments
    (``ignore_jit_warnings``, ``jit_options``), compiles nothing, and has none of the jit's
    restrictions (arguments may change shape between calls, the model may branch on values).
    """
