"""Property-based fuzzing of the public API (hypothesis), with a bounded, reproducible budget.

One strategy draws a whole training run of a given optimizer: a case from the case table
(flags and structural hyperparameters; continuous ones from ``draw_hparams``), 1-4 parameters of
random shapes (0-d and size 0 included), how many calls, which gradients are None,
``grad_scale``, the toolkit options (``global_clipnorm`` or ``clipnorm``, ``clipvalue``,
``l1``, ``ema_decay``, ``skip_nonfinite``, ``gradient_accumulation_steps``) and where
non-finite values go.  Three properties run on it, each parametrized by optimizer (or by
kind of bad input), so every optimizer gets its share of examples whatever hypothesis
favours:

* float64 results (parameters, every state entry, the EMA, iterations, skipped steps)
  equal ``ReferenceOptimizer`` driven through the toolkit formulas written out below;
* 1 and 2 threads (grain 1, so even 0-d tensors are split across chunks) give
  bit-identical results, float32 and float64, NaN and Inf included;
* a rejected call (bad gradient, bad hyperparameter, bad grad_scale) changes nothing,
  visible or hidden: the optimizer then follows exactly the trajectory of a twin that
  never saw the bad call (half-filled accumulation cycles included).

Only the public API is used, plus ``fusedoptim.set_num_threads`` and
``fusedoptim._kernels.set_grain_size`` (the conftest fixture restores both).

Budget: ``derandomize=True`` (the same examples on every run, no example database) and a
fixed ``max_examples`` per test: 25 per optimizer against the reference (275 runs), 6 per
optimizer and dtype for threads (132 runs of 2), 20 per kind of bad input (220); each run
is 1-12 calls.  The file takes about 20 s on two cores.  To fuzz harder locally:
``FO_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py`` (examples per test).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedoptim
from fusedoptim import _kernels
from cases import CASES, OPTIMIZERS, assert_same_snapshot, build, draw_hparams, snapshot
from reference import ReferenceOptimizer

NAN, INF = float("nan"), float("inf")
_SCALE = int(os.environ.get("FO_FUZZ_EXAMPLES", "0"))


def _settings(n: int):
    return settings(max_examples=_SCALE or n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ the strategy
# Shapes the kernels must handle: 0-d, size 0 (also inside an n-d shape), sizes that are
# no SIMD multiple, and a random 1-d length.
SHAPES = ((), (0,), (1,), (7,), (3, 1, 5), (2, 0, 3), (33,), (257,))


@st.composite
def runs(draw, name, dtype=np.float64, nonfinite=(NAN,), big=False):
    """A training run of optimizer ``name`` as a dict of plain data (``hp``, ``opts``,
    ``shapes``, ``calls``, ``seed``, ``dtype``); ``_params`` and ``_grads`` make its arrays.

    ``calls`` is a list of ``(mask, poison, grad_scale)``: ``mask[i]`` False gives
    parameter i a None gradient; ``poison`` is a list of ``(i, value)`` non-finite values
    written into gradient i.  ``grad_scale`` is one value for the whole run (each
    accumulated call's gradients enter the sum scaled by their own grad_scale; per-call
    scales are covered by tests/test_guarantees.py)."""
    kwargs = draw(st.sampled_from([kw for n, kw in CASES if n == name]), label="flags")
    seed = draw(st.integers(0, 2 ** 32 - 1), label="seed")
    hp = draw_hparams(name, kwargs, seed)
    shape = st.sampled_from(SHAPES) | st.integers(0, 3000 if big else 300).map(lambda n: (n,))
    shapes = draw(st.lists(shape, min_size=1, max_size=4), label="shapes")
    opts = {}
    norm = draw(st.sampled_from([None, "global_clipnorm", "clipnorm"]))
    if norm:
        opts[norm] = draw(st.floats(0.1, 30.0))
    if draw(st.booleans()):
        opts["clipvalue"] = draw(st.floats(0.05, 3.0))
    if draw(st.booleans()):
        opts["l1"] = draw(st.floats(1e-4, 1e-1))
    if draw(st.booleans()):
        opts["ema_decay"] = draw(st.floats(0.0, 0.999))
    opts["skip_nonfinite"] = draw(st.booleans())
    opts["gradient_accumulation_steps"] = k = draw(st.sampled_from([1, 1, 2, 3]))
    grad_scale = draw(st.sampled_from([1.0, 1.0, 0.0]) | st.floats(0.01, 4.0))
    n_calls = k * draw(st.integers(1, 4))
    calls = []
    for _ in range(n_calls):
        mask = draw(st.lists(st.booleans() | st.just(True), min_size=len(shapes), max_size=len(shapes)))
        poison = draw(st.lists(st.tuples(st.integers(0, len(shapes) - 1), st.sampled_from(nonfinite)),
                               max_size=1 if draw(st.integers(0, 5)) == 0 else 0))
        calls.append((mask, poison, grad_scale))
    return dict(name=name, hp=hp, opts=opts, shapes=shapes, calls=calls, seed=seed, dtype=np.dtype(dtype))


def _describe(run) -> str:
    return f"{run['name']} {run['hp']} {run['opts']} shapes={run['shapes']}"


def _params(run):
    rng = np.random.default_rng(run["seed"])
    return [rng.standard_normal(s).astype(run["dtype"]) for s in run["shapes"]]


def _grads(run):
    """The gradient list of every call (read-only arrays, None holes, poison written in)."""
    rng = np.random.default_rng(run["seed"] + 1)
    scale = 1.0 + 10.0 * (run["seed"] % 3 == 0)        # large enough for the clips to bind
    out = []
    for mask, poison, _ in run["calls"]:
        gs = [np.asarray(rng.standard_normal(s) * scale, dtype=run["dtype"]) for s in run["shapes"]]
        for i, v in poison:
            if gs[i].size:
                gs[i].reshape(-1)[int(rng.integers(gs[i].size))] = v
        for g in gs:
            g.flags.writeable = False
        out.append([g if m else None for g, m in zip(gs, mask)])
    return out


def _library_run(run, params, grads):
    opt = build(run["name"], params, **run["hp"], **run["opts"])
    for gs, (_, _, grad_scale) in zip(grads, run["calls"]):
        opt.step(gs, grad_scale=grad_scale)
    return opt


# ------------------------------------------------------------------ the toolkit reference
def _reference_run(run, params, grads):
    """float64 ``ReferenceOptimizer`` behind the toolkit, from the documented formulas:

    every k-th call applies the mean of the cycle's gradients (a parameter without any in
    the cycle is skipped), i.e. the sum times ``grad_scale / k``; with skip_nonfinite a
    non-finite gradient skips the step; the L2 norms are of the scaled gradients;
    ``clipvalue`` clamps the scaled gradient, then the norm clip multiplies by
    ``c / max(norm, c)`` (global) or per parameter; ``l1 * sign(theta)`` joins the gradient
    where the coupled weight decay does; ``ema = ema + (1 - decay) (theta - ema)``, started
    from the parameter after its first step (torch's AveragedModel, Keras).
    Returns ``(ReferenceOptimizer, emas, nonfinite_count)``."""
    o = run["opts"]
    k = o["gradient_accumulation_steps"]
    ref = ReferenceOptimizer(run["name"], params, **run["hp"])
    sign = -1.0 if run["hp"].get("maximize") else 1.0      # the rule negates what we pass
    emas = [None] * len(params)
    acc, count, skipped = {}, 0, 0
    for gs, (_, _, grad_scale) in zip(grads, run["calls"]):
        for i, g in enumerate(gs):
            if g is not None:
                acc[i] = g.astype(np.float64) if i not in acc else acc[i] + g
        count += 1
        if count < k:
            continue
        gs = [acc.get(i) for i in range(len(params))]
        acc, count = {}, 0
        s = grad_scale / k
        present = [g for g in gs if g is not None]
        finite = all(np.isfinite(g).all() for g in present)
        if o["skip_nonfinite"] and not finite:
            skipped += 1
            continue
        coef = [s] * len(gs)
        if "global_clipnorm" in o:
            c = o["global_clipnorm"]
            norm = math.sqrt(sum(float(np.sum(g * g)) for g in present)) * s
            coef = [x * (c / max(norm, c) if finite else NAN) for x in coef]
        if "clipnorm" in o:
            c = o["clipnorm"]
            for i, g in enumerate(gs):
                if g is not None:
                    n = math.sqrt(float(np.sum(g * g))) * s
                    coef[i] *= c / max(n, c) if math.isfinite(n) else NAN
        cv = o.get("clipvalue")
        cv_raw = cv / s if cv is not None and s > 0 else INF     # clamp g so that g * s is in [-cv, cv]
        eff = []
        for i, (g, theta) in enumerate(zip(gs, ref.params)):
            if g is None:
                eff.append(None)
                continue
            x = np.clip(g, -cv_raw, cv_raw) * coef[i]
            if o.get("l1"):
                # the kernels' fo_sign: 0 for a NaN parameter (Adan keeps -g in previous_grad)
                x = x + sign * o["l1"] * np.sign(np.nan_to_num(theta, nan=0.0))
            eff.append(x)
        ref.step(eff)
        if o.get("ema_decay") is not None:
            w = 1.0 - o["ema_decay"]
            for i, g in enumerate(eff):
                if g is not None:
                    e = emas[i]
                    emas[i] = ref.params[i].copy() if e is None else e + w * (ref.params[i] - e)
    return ref, emas, skipped


def _assert_close(got, want, what, rtol=1e-10, atol=1e-10):
    """Equal within tolerance where ``want`` is finite; non-finite exactly where it is."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    fin = np.isfinite(want)
    bad = np.flatnonzero(np.isfinite(got).reshape(-1) != fin.reshape(-1))
    assert bad.size == 0, (f"{what}: finite where the reference is not (or vice versa) at flat index "
                           f"{bad[:5]}: {got.reshape(-1)[bad[:5]]} vs {want.reshape(-1)[bad[:5]]}")
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=atol, err_msg=what)


# ------------------------------------------------------------------ property 1: float64 vs reference
@pytest.mark.parametrize("name", OPTIMIZERS)
@_settings(25)
@given(data=st.data())
def test_float64_matches_reference(name, data):
    """float64 parameters, state (every key, counters exact), EMA, iteration and skip
    counts equal the float64 reference; NaN gradients propagate where the reference's do."""
    run = data.draw(runs(name), label="run")
    what = _describe(run)
    params = _params(run)
    grads = _grads(run)
    ref, emas, skipped = _reference_run(run, params, grads)
    opt = _library_run(run, params, grads)
    assert opt.iterations == ref.iterations, what
    assert opt.nonfinite_count == skipped, what
    ema_on = run["opts"].get("ema_decay") is not None
    for i, (p, rs) in enumerate(zip(params, ref.state)):
        _assert_close(p, ref.params[i], f"{what}: params[{i}]")
        st_ = opt.state.get(p)
        if rs is None:
            assert st_ is None, f"{what}: params[{i}] got state without a step"
            continue
        keys = sorted(k for k in st_ if k != "ema")
        assert keys == sorted(rs), f"{what}: params[{i}] state keys {keys} != {sorted(rs)}"
        for key, want in rs.items():
            if key == "step":
                assert st_[key] == want, f"{what}: params[{i}] step {st_[key]} != {want}"
            elif isinstance(want, np.ndarray):
                assert st_[key].dtype == p.dtype, f"{what}: params[{i}] {key} dtype"
                _assert_close(st_[key], want, f"{what}: params[{i}] {key}")
            else:
                assert math.isclose(st_[key], want, rel_tol=1e-14), f"{what}: params[{i}] {key}"
        assert ("ema" in st_) == ema_on, f"{what}: params[{i}] ema presence"
        if ema_on:
            _assert_close(st_["ema"], emas[i], f"{what}: params[{i}] ema")


# ------------------------------------------------------------------ property 2: threads
def _run_threads(run, n):
    fusedoptim.set_num_threads(n)
    assert fusedoptim.get_num_threads() == n
    params = _params(run)
    opt = _library_run(run, params, _grads(run))
    snap = snapshot(opt, params)
    return snap, opt.nonfinite_count, getattr(opt, "last_grad_norm", None), opt.state_dict()


@pytest.mark.skipif(not _kernels.HAVE_OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@_settings(6)
@given(data=st.data())
def test_one_and_two_threads_bit_identical(name, dtype, data):
    """Grain 1 splits every call across both threads (chunk edges inside tensors, on
    empty ones, on 0-d ones); parameters, state, EMA, norms, counters: the same bits."""
    run = data.draw(runs(name, dtype=dtype, nonfinite=(NAN, INF, -INF), big=True), label="run")
    _kernels.set_grain_size(1)
    (a, na, norm_a, sd_a), (b, nb, norm_b, sd_b) = (_run_threads(run, n) for n in (1, 2))
    assert_same_snapshot(a, b, same_arrays=False)
    assert na == nb and sd_a["accum_count"] == sd_b["accum_count"]
    assert norm_a == norm_b or (norm_a != norm_a and norm_b != norm_b), (norm_a, norm_b)


# ------------------------------------------------------------------ property 3: rejected input
# invalid values of every hyperparameter a group can have (set between steps)
BAD_HYPER = {
    "lr": [-1e-3, NAN, INF, "0.1", True, None],
    "eps": [-1e-8, NAN, INF],
    "weight_decay": [-0.1, NAN, INF],
    "momentum": [-0.5, NAN],
    "dampening": [1.5, NAN],
    "betas": [(1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (0.9, NAN), (0.9,), ("0.9", 0.9)],
    "alpha": [-0.1, NAN],
    "rho": [1.5, -0.1, NAN],
    "lr_decay": [-1e-3, NAN],
    "initial_accumulator_value": [-1.0, NAN],
    "momentum_decay": [-1e-3, INF],
    "etas": [(0.0, 1.2), (0.5, 1.0), (1.2, 0.5), (NAN, 1.2), (0.5, 1.2, 2.0)],
    "step_sizes": [(-1e-6, 50.0), (1.0, 0.5), (1e-6, INF)],
    "maximize": [1, "yes", None],
    "amsgrad": [0, 1],
    "nesterov": [1],
    "centered": [0],
    "decoupled_weight_decay": [None, 1],
    "l1": [-1.0, NAN],
}

BAD_KINDS = ("grad shape", "grad dtype", "grad int", "grad not contiguous", "grad is a list", "grad is its param",
             "too few grads", "too many grads", "one array", "hyperparameter", "grad_scale")


def _bad_call(kind, pick, params, grads, opt):
    """Apply bad input ``kind`` to this call; returns ``(grads, grad_scale, undo)``."""
    gs = list(grads)
    sized = [i for i, p in enumerate(params) if p.size >= 2] or [None]
    i = pick % len(params)
    p = params[i]
    if kind == "grad shape":
        gs[i] = np.ones(p.shape + (2,), p.dtype)
    elif kind == "grad dtype":
        gs[i] = np.ones(p.shape, np.float32 if p.dtype == np.float64 else np.float64)
    elif kind == "grad int":
        gs[i] = np.ones(p.shape, np.int64)
    elif kind == "grad not contiguous" and sized[0] is not None:
        j = sized[pick % len(sized)]      # the right shape and dtype, every other element
        gs[j] = np.ones(params[j].shape + (2,), params[j].dtype)[..., 0]
    elif kind == "grad is a list":
        gs[i] = np.ones(p.shape).tolist()
    elif kind == "grad is its param" and sized[0] is not None:
        j = sized[pick % len(sized)]
        gs[j] = params[j]
    elif kind == "too few grads":
        gs = gs[:-1]
    elif kind == "too many grads":
        gs = gs + [np.ones(3, p.dtype)]
    elif kind == "one array":
        gs = np.ones(p.shape, p.dtype)
    elif kind == "hyperparameter":
        group = opt.param_groups[0]
        keys = sorted(k for k in BAD_HYPER if k in group)
        key = keys[pick % len(keys)]
        old = group[key]
        group[key] = BAD_HYPER[key][(pick // len(keys)) % len(BAD_HYPER[key])]
        return gs, 1.0, lambda: group.__setitem__(key, old)
    elif kind == "grad_scale":
        return gs, [-1.0, NAN, INF, "2", None][pick % 5], lambda: None
    else:                               # no parameter with 2+ elements: a shape error instead
        gs[i] = np.ones(p.shape + (2,), p.dtype)
    return gs, 1.0, lambda: None


def _deep_equal(a, b, where="state_dict"):
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert sorted(a, key=repr) == sorted(b, key=repr), f"{where}: keys {sorted(a, key=repr)} != {sorted(b, key=repr)}"
        for k in a:
            _deep_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length"
        for j, (x, y) in enumerate(zip(a, b)):
            _deep_equal(x, y, f"{where}[{j}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), where
    elif callable(a):
        assert a is b, where
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("kind", BAD_KINDS)
@_settings(20)
@given(name=st.sampled_from(OPTIMIZERS), data=st.data(), pick=st.integers(0, 10 ** 6), at=st.integers(0, 12))
def test_rejected_call_changes_nothing(kind, name, data, pick, at):
    """A bad call at any point (mid accumulation cycle included) raises TypeError or
    ValueError and leaves params, state, groups, counters and hidden accumulators as they
    were: afterwards the optimizer and a twin that never saw the call agree bit for bit."""
    run = data.draw(runs(name, nonfinite=(NAN, INF)), label="run")
    what = f"{_describe(run)} bad={kind}/{pick}"
    grads = _grads(run)
    at = at % (len(grads) + 1)
    params, twin_params = _params(run), _params(run)
    opt = build(run["name"], params, **run["hp"], **run["opts"])
    twin = build(run["name"], twin_params, **run["hp"], **run["opts"])
    for t, (gs, (_, _, grad_scale)) in enumerate(zip(grads, run["calls"])):
        if t == at:
            before, sd = snapshot(opt, params), opt.state_dict()
            bad, bad_scale, undo = _bad_call(kind, pick, params, gs, opt)
            with pytest.raises((TypeError, ValueError)):
                opt.step(bad, grad_scale=bad_scale)
            undo()
            assert_same_snapshot(before, snapshot(opt, params))
            _deep_equal(sd, opt.state_dict())
        opt.step(gs, grad_scale=grad_scale)
        twin.step(gs, grad_scale=grad_scale)
    assert_same_snapshot(snapshot(twin, twin_params), snapshot(opt, params), same_arrays=False)
    _deep_equal(twin.state_dict(), opt.state_dict())
    assert opt.nonfinite_count == twin.nonfinite_count, what
