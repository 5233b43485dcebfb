"""`@jaxobs.observe`: statistics inside the jitted step, delivered to the host without
stalling the device.

`Observed` wires the parts together; each lives in its own module:

- `ObserveOptions` (options.py): the options, validated once;
- `StepShape` (step_shapes.py): what the step's arguments are (TrainState, NNX, optax),
  chosen once from the first call;
- `step_body` (body.py): the traced body, one pure function;
- the transport (packing.py, delivery.py): **outputs** when `observe` owns the jit (the
  statistics are one extra output, fetched by a background thread), **callbacks** when the
  observed step is itself traced (`jax.jit` or `nnx.jit` on top: one `io_callback` a step);
- `Supervisor` (host/supervisor.py): rules, alerts, halt, snapshots, rollback, crash dumps.

Every record carries the step it belongs to as a device value (the state's own ``step``
when it has one, else the call counter that `observe` passes in), so a late or reordered
delivery can never attach a value to the wrong step; and the run it belongs to, resolved
when the step is called (outputs) or when its callback arrives (callbacks).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

from jaxobs._src.device.guard import GuardState, guard_init
from jaxobs._src.device.window import WindowState, window_init
from jaxobs._src.engine.body import step_body
from jaxobs._src.engine.collect import warn_once
from jaxobs._src.engine.delivery import Callbacks, Deliverer, Ticket, under_transformation
from jaxobs._src.engine.options import ObserveOptions
from jaxobs._src.engine.packing import Packed
from jaxobs._src.engine.step_shapes import StepShape, choose_shape
from jaxobs._src.host.checker import HealthChecker
from jaxobs._src.host.recorder import FlightRecorder
from jaxobs._src.host.run import active_run
from jaxobs._src.host.supervisor import Supervisor

__all__ = ["Observed", "observe"]


class StepClock:
    """The state's step number of each call, on the host, without waiting for the device.

    A call's step is its index plus an offset: read once from the state when first asked,
    then learned from each delivered record (its step minus its call index), so a state
    swapped by the user is followed.
    """

    def __init__(self) -> None:
        self._offset: int | None = None

    def learn(self, call: int, step: int) -> None:
        self._offset = step - call

    def step(self, call: int, read: Callable[[], int]) -> int:
        if self._offset is None:
            self._offset = read() - call
        return call + self._offset


def _option(name: str) -> property:
    return property(
        lambda self: getattr(self.options, name), doc=f"The ``{name}`` option (see `observe`)."
    )


class Observed:
    """A train step wrapped by `observe`. Call it like the step itself.

    Args:
      fn: The train step.
      options: An `ObserveOptions`, or none and the options as keywords (those of
        `observe`; any other keyword is forwarded to `jax.jit`).

    Attributes:
      fn: The train step.
      options: Its `ObserveOptions`.
      supervisor: The `Supervisor` that acts on its health and keeps its snapshots.
    """

    def __init__(self, fn: Callable, options: ObserveOptions | None = None, /, **kwargs: Any):
        if not callable(fn):
            raise TypeError(f"observe needs a function to observe, got {fn!r}")
        if options is not None and kwargs:
            raise TypeError("Observed takes an ObserveOptions or keywords, not both")
        self.fn = fn
        self.options = options if options is not None else ObserveOptions.from_kwargs(kwargs)
        self.supervisor = Supervisor(self.options.checker, self.options.flight_recorder)
        self.supervisor.add_source(self.flush)
        self._shape: StepShape | None = None
        self._programs: dict[tuple[bool, bool], Callable] = {}  # (sample, hist) -> jitted
        self._guard_state: GuardState | None = None
        self._window: WindowState | None = None
        self._calls = 0  # host calls dispatched (the step of a state without a counter)
        self._clock = StepClock()
        self._deliverer = Deliverer(self._deliver)
        every, histograms = self.options.every, self.options.histogram_every
        self._callbacks = Callbacks(self._deliver, every=every, histograms=histograms)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._shape is None:
            self._shape = choose_shape(args)
        shape = self._shape
        if under_transformation(args, kwargs) or not self.options.jit:
            return self._call_with_callback(shape, args, kwargs)
        run = self._bind_run()  # the records of this call go to this run, however late
        supervisor = self.supervisor
        if supervisor.acts_on_steps:
            self._deliverer.wait(lag=1)  # act on step s - 1 before dispatching s + 1
        args = supervisor.before_step(
            args, run=run, restore=shape.restore, current_step=self._current_step
        )
        call = self._calls
        # The state's step (read once, before the call: it may donate), for the sampling
        # choice, the snapshots, and the default step of the run's own `log` calls.
        step = self._clock.step(call, lambda: self._current_step(args))
        if run is not None:
            run.note_dispatched(step)
        self._calls += 1
        options = self.options
        sample = step % options.every == 0
        hist = bool(options.histogram_every) and step % options.histogram_every == 0
        out, packed = self._dispatch(np.int32(call), (sample, hist), args, kwargs)
        snapshot = supervisor.after_step(step, lambda: shape.state_tree(args, out))
        self._deliverer.submit(packed, Ticket(run, call, snapshot))
        return out

    # -- public state

    run = _option("run")
    level = _option("level")
    every = _option("every")
    window = _option("window")
    watch = _option("watch")
    stats = _option("stats")
    per = _option("per")
    activations = _option("activations")
    act_stats = _option("act_stats")
    metrics_prefix = _option("metrics_prefix")
    histograms = _option("histograms")
    histogram_bins = _option("histogram_bins")

    @property
    def health(self) -> HealthChecker | None:
        """The `HealthChecker` (None without health checks)."""
        return self.supervisor.checker

    @property
    def recorder(self) -> FlightRecorder | None:
        """The `FlightRecorder` dumped on a failure (None when off)."""
        return self.supervisor.recorder

    @recorder.setter
    def recorder(self, recorder: FlightRecorder | None) -> None:
        if recorder is not None and not isinstance(recorder, FlightRecorder):
            raise TypeError(f"recorder must be a jaxobs.FlightRecorder or None, got {recorder!r}")
        self.supervisor.recorder = recorder

    @property
    def rollbacks(self) -> list[dict[str, Any]]:
        """One dict per rollback: ``at_step``, ``restored_step``, ``trigger_step``,
        ``streak_start`` (the state's own step numbers)."""
        return self.supervisor.rollbacks

    @property
    def dumps(self) -> list[Any]:
        """The crash dumps written, in order."""
        return self.supervisor.dumps

    @property
    def batches_to_skip(self) -> int:
        """Batches the data loop should skip after rollbacks (see `take_batches_to_skip`)."""
        return self.supervisor.batches_to_skip

    @batches_to_skip.setter
    def batches_to_skip(self, n: int) -> None:
        self.supervisor.batches_to_skip = n

    def take_batches_to_skip(self) -> int:
        """How many batches the data loop should skip after a rollback (and reset it)."""
        return self.supervisor.take_batches_to_skip()

    @property
    def shape(self) -> StepShape:
        """The step's shape, chosen from the first call's arguments."""
        if self._shape is None:
            raise RuntimeError("the step's shape is known from its first call on")
        return self._shape

    @property
    def guard_state(self) -> GuardState | None:
        """The health guard's device state (save it with your checkpoints; None before the
        first step or without a `HealthChecker`)."""
        return self._guard_state

    @guard_state.setter
    def guard_state(self, state: GuardState | None) -> None:
        if state is not None and not isinstance(state, GuardState):
            raise TypeError(f"guard_state must be a jaxobs.health.GuardState, got {state!r}")
        self._guard_state = state

    def flush(self) -> None:
        """Wait until every step's statistics so far have been logged."""
        self._callbacks.flush()  # callbacks still in flight arrive before this returns
        self._deliverer.flush()

    # -- dispatching (outputs transport)

    def _bind_run(self) -> Any:
        """The run records go to now (``run=``, else the active run), watched by the
        supervisor; a run already supervised for the same checker lends its supervisor."""
        run = self.options.run if self.options.run is not None else active_run()
        if run is not None and not self.supervisor.watches(run):
            self.supervisor = self.supervisor.for_run(run)
            self.supervisor.attach(run)
        return run

    def _current_step(self, args: tuple) -> int:
        """The step the next call runs at: the state's own counter (read from the device),
        or the number of calls so far."""
        value = self.shape.step(args)
        return self._calls if value is None else int(jax.device_get(value))

    @property
    def _samples(self) -> bool:
        """Whether the host chooses between programs (every=N, histograms=N)."""
        return self.options.every > 1 or self.options.histogram_every > 1

    def _dispatch(
        self, step: np.int32, program: tuple[bool, bool], args: tuple, kwargs: dict
    ) -> tuple[Any, Packed]:
        try:
            return self._run_jitted(step, program, args, kwargs)
        except jax.errors.UnexpectedTracerError:
            if not self.options.activations:
                raise
            warn_once(
                "acts-leak",
                "activation statistics could not leave a nested transformation "
                "(scan/remat/vmap) in this step; they are turned off for it",
            )
            self.options = dataclasses.replace(self.options, activations=False)
            self._programs = {}
            self._guard_state = None  # its dead-unit masks went with the activations
            return self._run_jitted(step, program, args, kwargs)

    def _run_jitted(
        self, step: np.int32, program: tuple[bool, bool], args: tuple, kwargs: dict
    ) -> tuple[Any, Packed]:
        carry = self._ensure_carry(step, args, kwargs)
        jitted = self._programs.get(program)
        if jitted is None:  # compiled on first use: a run with every=1 never builds the plain one
            jitted = self.shape.jit(self._traced_fn(*program), **_shift(self.options.jit_kwargs))
            self._programs[program] = jitted
        out, packed, (self._guard_state, self._window) = jitted(step, carry, *args, **kwargs)
        return out, packed

    def _traced_fn(self, sample: bool, hist: bool) -> Callable:
        """The body to jit: the user's step with the step counter and the carried state
        (guard, window) as first arguments; ``sample`` and ``hist`` say whether this program
        computes the statistics and the histograms."""

        def traced(_jaxobs_step, _jaxobs_carry, *args, **kwargs):
            body = step_body(
                self.options,
                self.shape,
                self.fn,
                _jaxobs_step,
                _jaxobs_carry,
                args,
                kwargs,
                sample=sample,
                hist=hist,
            )
            return body.out, body.packed, (body.guard, body.window)

        # Named after the user's step, so compilations and profiles show whose it is.
        name = getattr(self.fn, "__name__", "step")
        traced.__name__ = traced.__qualname__ = (
            f"{name}{'' if sample else '_plain'}{'_hist' if hist and not sample else ''}"
        )
        return _with_signature(traced, self.fn, ("_jaxobs_step", "_jaxobs_carry"))

    def _ensure_carry(
        self, step: np.int32, args: tuple, kwargs: dict
    ) -> tuple[GuardState | None, WindowState | None]:
        """The guard's and the window's states, made on the first call: one abstract trace
        (nothing runs) finds the layers whose units the guard tracks and the signals the
        step has for the window."""
        checker, options = self.health, self.options
        need_guard = checker is not None and self._guard_state is None
        need_window = bool(options.window_signals) and self._window is None
        if need_guard or need_window:
            alive: dict[str, Any] = {}
            signals: tuple[str, ...] = ()
            if (need_guard and options.probes_activations) or need_window:
                probe = None if checker is None else guard_init(checker.guard_config)

                def trace(*a, **k):
                    body = step_body(options, self.shape, self.fn, step, (probe, None), a, k)
                    return body.alive, body.signals

                alive, found = self.shape.eval_shape(trace, *args, **kwargs)
                signals = tuple(n for n in options.window_signals if n in found)
            if need_guard and checker is not None:
                self._guard_state = guard_init(checker.guard_config, alive)
            if need_window:
                self._window = window_init(signals)
        return self._guard_state, self._window

    # -- the callbacks transport

    def _call_with_callback(self, shape: StepShape, args: tuple, kwargs: dict) -> Any:
        """Inside someone else's trace: deliver through one io_callback per step."""
        self._bind_run()  # at trace time: the run to flush before it ends
        if self.health is not None:
            warn_once(
                "guard-stateless",
                "observe is traced by an outer jit, so the health guard cannot carry its "
                "window between steps: only non-finite steps are detected (and skipped) on "
                "the device; make @jaxobs.observe the outermost decorator for spike checks",
            )
        # Without a step in the state, a host counter read here would be a constant of the
        # trace: the step is then given on arrival, by ordered callbacks.
        on_host = shape.step(args) is None
        body = step_body(
            self.options,
            shape,
            self.fn,
            jnp.int32(-1),
            (None, None),
            args,
            kwargs,
            sample=None,
            hist=None,
            numbered_on_host=on_host,
        )
        out, packed = body.out, body.packed
        # A callback has no host dispatch to bind its run at: the run active on arrival.
        self._callbacks.send(packed, lambda: Ticket(self._bind_run()), number_on_arrival=on_host)
        return out

    # -- host delivery

    def _deliver(
        self, ticket: Ticket, step: int, values: dict[str, float], hists: dict[str, Any]
    ) -> None:
        """On the delivery thread (or a callback): log the record into its run, then keep
        the snapshot taken after it, if any."""
        if ticket.call is not None:
            self._clock.learn(ticket.call, step)
        run = ticket.run
        if (values or hists) and run is None:
            warn_once(
                "no-run",
                "@jaxobs.observe has no run to feed: call jaxobs.init() first "
                "or pass run=...; statistics are dropped",
            )
        elif (values or hists) and not run.finished:
            if values:
                run.log(values, step=step)
            if hists:
                run.log_histograms(hists, step=step)
        if ticket.snapshot is not None:
            self.supervisor.keep_snapshot(ticket.snapshot, step + 1)


def _with_signature(traced: Callable, fn: Callable, first: tuple[str, ...]) -> Callable:
    """``traced`` with ``fn``'s signature, ``first`` prepended as positional-only, so that
    ``static_argnames`` and ``donate_argnames`` resolve as in the user's own step."""
    try:
        sig = inspect.signature(fn)
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in first]
        signature = sig.replace(parameters=[*params, *sig.parameters.values()])
        traced.__signature__ = signature  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # builtins and the like: keep *args
        pass
    return traced


def _shift(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The user's argnums refer to their step; the jitted body takes two arguments first."""
    out = dict(kwargs)
    for name in ("static_argnums", "donate_argnums"):
        if name in out and out[name] is not None:
            nums = (out[name],) if isinstance(out[name], int) else tuple(out[name])
            out[name] = tuple(n + 2 if n >= 0 else n for n in nums)
    return out


@overload
def observe(fn: Callable[..., Any], **options: Any) -> Observed: ...


@overload
def observe(fn: None = None, **options: Any) -> Callable[[Callable[..., Any]], Observed]: ...


def observe(
    fn: Callable[..., Any] | None = None, **options: Any
) -> Observed | Callable[[Callable[..., Any]], Observed]:
    """Decorate a train step so that jaxobs observes it. Use as the outermost decorator.

    `observe` jits the step itself (forwarding ``static_argnums``, ``donate_argnums`` and the
    other `jax.jit` arguments; `nnx.jit` when an argument is an NNX module), computes
    statistics inside the step, and strips them from the outputs: the step's signature and
    outputs are unchanged.

    What it records without any `tap`, for the step shapes it recognises:

    - a flax ``TrainState`` step ``(state, batch) -> (state, metrics)``,
    - an NNX step ``(model, optimizer, batch) -> metrics`` that updates the model in place,
    - a plain optax step ``(params, opt_state, batch) -> (params, opt_state, metrics)``:

    statistics of the new parameters (``params/...``) and of new minus old parameters
    (``updates/...``), ``updates/<layer>/update_ratio`` (``||new - old|| / ||new||`` over the
    layer's leaves, from the norms already computed), and ``train/<name>`` for every scalar
    in the returned metrics dict. Gradients (and anything else) are recorded with
    ``jaxobs.tap(grads=grads)`` inside the step. Which statistics, and so the cost, is set by
    ``level`` (`jaxobs.LogLevel`): ``BASIC`` global norms (``grads/global_norm``),
    ``DETAILED`` (the default) the norm of every leaf (``grads/Dense_0/kernel/norm``),
    ``EXPERT`` every statistic of `jaxobs.stats.STATS` per leaf, ``DEBUG`` those and
    histograms. With
    ``activations=True``, the outputs of flax linen and NNX layers (Dense/Linear, Conv,
    ConvTranspose, norms, Embed, attention) are reduced to ``acts/<layer path>/<stat>`` where
    they are produced.

    With ``every=N``, `observe` compiles two programs (on first use of each) and chooses on
    the host: the observed one at one step in N, and at the others the plain step plus the
    metrics and what the health guard needs; no predicate inside the step. The health
    signals (the loss, the gradient norm, and with ``health`` the largest update) are still
    computed at every step, reduced on the device to ``window/<signal>/min``, ``/max``,
    ``/mean``, ``/last`` and ``/nonfinite`` (and ``window/steps``), and delivered with the next
    sampled step: a spike between two samples is never hidden.

    Args:
      fn: The train step (omit it to get a decorator: ``@observe(every=10)``).

    Keyword Args:
      run (Run | None): The `jaxobs.Run` to feed (default: the run active when the step is called).
      level (LogLevel | str): How much to compute (`jaxobs.LogLevel`; ``"basic"``,
        ``"detailed"``, the default, ``"expert"``, ``"debug"``). ``stats``, ``per``, ``watch``
        and ``histograms`` given explicitly win over it.
      every (int): Compute statistics at one step in N (the steps whose number is a multiple of
        N), in a program of their own; the other steps run the plain program. Metrics and the
        health guard run at every step.
      window (bool | Iterable[str] | None): The health signals kept between samples with
        ``every > 1``, from ``("loss", "grad_norm", "update_max_abs")``: the default (None)
        keeps the loss and the gradient norm, and the largest update when ``health`` is on;
        True all three; False none.
      watch (Iterable[str]): Which groups to record: ``params``, ``updates``, ``grads``,
        ``metrics``, ``acts``, ``taps``.
      stats (Iterable[str]): Which statistics of `jaxobs.stats.STATS` to compute (default: the
        level's).
      per (str): ``"leaf"``, ``"layer"`` or ``"global"`` (default: the level's).
      activations (bool): Record activation statistics (flax linen and NNX).
      act_stats (Iterable[str]): Which of `jaxobs.stats.ACT_STATS` (default: mean, std,
        max_abs, zero_frac, dead_frac, nonfinite; min and max on request).
      saturation (str | Mapping[str, str] | None): The nonlinearity after the probed layers,
        "tanh" or "sigmoid", or {layer path: kind}; adds saturation_frac (None: off).
      saturation_threshold (float): In (0.5, 1): saturated where |f(z)| is above it (0.97).
      metrics_prefix (str): Prefix for returned metrics (default ``train``: ``train/loss``).
      health (HealthChecker | bool | None): A `jaxobs.HealthChecker` (or True for the defaults): the
        on-device guard and the host rules (see the health docs).
      recorder (int | FlightRecorder | None): The flight recorder for crash dumps: a number of steps
        to keep (default 256; 0: off) or a configured `jaxobs.FlightRecorder`.
      histograms (int): Every how many steps to compute histograms of the watched parameters,
        updates and tapped gradients on the device (0: never; the default is 0, or ``every``
        at the ``DEBUG`` level). Only the bins
        (``histogram_bins + 4`` numbers per leaf) leave the device; they are recorded with
        `jaxobs.Run.log_histograms` under ``params/<path>``, ``updates/<path>``, ``grads/<path>``.
      histogram_bins (int): Bins per histogram (at most 512).
      jit (bool): False to run the step un-jitted (debugging); records go through a callback.
      **jit_kwargs (Any): Forwarded to `jax.jit` / `nnx.jit`.

    Returns:
      The `Observed` step, or (without ``fn``) a decorator that makes one.

    Raises:
      ValueError, TypeError: a bad option, naming it (see `ObserveOptions`).

    Example:
      >>> @jaxobs.observe(every=10)
      ... def train_step(state, batch):
      ...     ...
    """
    if fn is None:
        ObserveOptions.from_kwargs(options)  # a bad option fails here, not at decoration
        return lambda f: Observed(f, **options)
    return Observed(fn, **options)
