"""The one table of optimizer cases every test file draws from, plus test data helpers.

``CASES`` lists ``(optimizer name, kwargs)``: for each optimizer, the product of its
flags (maximize, amsgrad, nesterov, centered, decoupled_weight_decay) and of its
structural hyperparameters switched on or off (weight_decay, momentum, dampening,
lr_decay, initial_accumulator_value; Rprop's narrow step_sizes window), minus the combinations the optimizer rejects
(nesterov needs momentum and no dampening).  The kwargs only say *which* features are
on; ``draw_hparams`` then draws every continuous hyperparameter from a seed, keeping the
zeros zero, so each case runs with hyperparameters nobody hand-picked.
"""
from __future__ import annotations

import itertools
import math
import zlib
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import pytest

from reference import DEFAULTS

OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "Rprop",
              "Lion", "ASGD")
# the pytorch_optimizer / Keras / schedulefree element-wise optimizers (their oracles: test_collection_oracles.py)
OPTIMIZERS += ("AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD")

# (name, list of axes); each axis is a list of kwargs fragments, one of which is chosen.
_ON_OFF = lambda k, v: [{}, {k: v}]  # noqa: E731
_AXES: Dict[str, List[List[dict]]] = {
    "SGD": [[{}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5}, {"momentum": 0.9, "nesterov": True}],
            _ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    "Adam": [_ON_OFF("amsgrad", True),
             [{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decoupled_weight_decay": True}],
             _ON_OFF("maximize", True)],
    "AdamW": [_ON_OFF("amsgrad", True), [{}, {"weight_decay": 0.0}], _ON_OFF("maximize", True)],
    "Adagrad": [_ON_OFF("lr_decay", 1e-2), _ON_OFF("initial_accumulator_value", 0.1),
                _ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    "RMSprop": [_ON_OFF("centered", True), _ON_OFF("momentum", 0.9), _ON_OFF("weight_decay", 1e-2),
                _ON_OFF("maximize", True)],
    "Adamax": [_ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    "NAdam": [[{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decoupled_weight_decay": True}],
              _ON_OFF("maximize", True)],
    "RAdam": [[{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decoupled_weight_decay": True}],
              _ON_OFF("maximize", True)],
    "Adadelta": [_ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    # step sizes are drawn from a wide window; the fixed narrow one makes both clamps bind often
    "Rprop": [_ON_OFF("step_sizes", (1e-3, 2e-2)), _ON_OFF("maximize", True)],
    "Lion": [_ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    # t0 = 10: the averaging (mu_t < 1) starts within the run; the default 1e6 keeps ax = theta
    "ASGD": [_ON_OFF("t0", 10.0), _ON_OFF("weight_decay", 1e-2), _ON_OFF("maximize", True)],
    # weight_decouple is on by default (pytorch_optimizer); rectify's SGD fallback is reached while rho_t < 5
    "AdaBelief": [[{}, {"ams_bound": True}, {"rectify": True}],
                  [{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "weight_decouple": False}],
                  _ON_OFF("maximize", True)],
    "Yogi": [[{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "weight_decouple": False}], _ON_OFF("maximize", True)],
    # Adan's default decay is the proximal division (weight_decouple=False)
    "Adan": [[{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "weight_decouple": True}], _ON_OFF("maximize", True)],
    # learning_rate_power -0.5 (the default) takes square roots, any other value pow()
    "Ftrl": [_ON_OFF("learning_rate_power", -0.3),
             [{}, {"l1_regularization_strength": 1e-2, "l2_regularization_strength": 1e-2,
                   "l2_shrinkage_regularization_strength": 1e-2, "beta": 0.1, "weight_decay": 1e-2}],
             _ON_OFF("maximize", True)],
    "ScheduleFreeAdamW": [_ON_OFF("weight_decay", 1e-2), _ON_OFF("warmup_steps", 10), _ON_OFF("maximize", True)],
    "ScheduleFreeSGD": [_ON_OFF("weight_decay", 1e-2), _ON_OFF("warmup_steps", 10), _ON_OFF("maximize", True)],
}


def _cases() -> List[Tuple[str, dict]]:
    out = []
    for name in OPTIMIZERS:
        for frags in itertools.product(*_AXES[name]):
            kw = {}
            for f in frags:
                kw.update(f)
            out.append((name, kw))
    return out


CASES: List[Tuple[str, dict]] = _cases()


def case_id(name: str, kwargs: dict) -> str:
    """``Adam-amsgrad-weight_decay=0.01-decoupled_weight_decay``; ``SGD-plain`` for defaults."""
    parts = [k if v is True else f"{k}={v}" for k, v in kwargs.items()]
    return "-".join([name] + parts) if parts else f"{name}-plain"


def case_params(cases=None) -> list:
    """``CASES`` as ``pytest.param``s with readable ids, for ``@pytest.mark.parametrize("name,kwargs", ...)``."""
    return [pytest.param(n, kw, id=case_id(n, kw)) for n, kw in (CASES if cases is None else cases)]


# One case per optimizer, with every feature it has switched on (for the slower tests).
def _richest(name: str) -> dict:
    return max((kw for n, kw in CASES if n == name), key=len)


RICH_CASES: List[Tuple[str, dict]] = [(n, _richest(n)) for n in OPTIMIZERS]


# ------------------------------------------------------------- random hyperparameters
def seed_for(*parts) -> int:
    """A stable seed from any reprs (hash() is salted per process)."""
    return zlib.crc32(repr(parts).encode())


# hyperparameters that switch a feature on when non-zero: drawn only if the case turns them on
STRUCTURAL = ("weight_decay", "momentum", "dampening", "lr_decay", "initial_accumulator_value")


def draw_hparams(name: str, kwargs: dict, seed: int) -> dict:
    """Full hyperparameters for case ``(name, kwargs)``, drawn from ``seed``.

    Flags come from ``kwargs``; a structural hyperparameter is drawn when the case (or
    the optimizer's default) has it non-zero and stays 0 otherwise; lr, betas, eps,
    alpha, rho and momentum_decay are always drawn.  Ranges are valid and keep 200 steps
    of N(0, 1) gradients finite and well conditioned:

    lr log-uniform [1e-4, 1e-1] (Adadelta [1e-2, 1]); beta1 uniform [0, 0.999), so both
    branches of torch.lerp (weight 1 - beta1 below and above 0.5) are taken; beta2 and
    RMSprop's alpha uniform [0.5, 0.999) (for RAdam both sides of rho_t > 5 are still
    reached); eps log-uniform [1e-10, 1e-6] (Adadelta [1e-8, 1e-4]: its eps seeds the step
    size; Yogi [1e-4, 1e-2] around its default 1e-3: its v can shrink towards 0, where a
    tiny eps makes m / sqrt(v) amplify ulp differences); rho [0, 0.999); momentum [0.1, 0.99); dampening [0.05, 1]; weight_decay
    log-uniform [1e-4, 1e-1]; lr_decay [1e-4, 1e-1]; initial_accumulator_value [1e-2, 1];
    momentum_decay [1e-3, 1e-2]; ASGD's lambd log-uniform [1e-5, 1e-2] and alpha (its decay
    power) uniform [0.5, 0.999); Adan's betas (uniform [0, 0.999), [0, 0.999), [0.5, 0.999));
    Ftrl's learning_rate_power uniform [-1, 0) when the case sets it, its three regularization
    strengths log-uniform [1e-3, 1e-1] and beta uniform [0, 1) when the case turns them on;
    schedule-free r uniform [0, 1); Rprop's etas (uniform [0.1, 0.9), uniform [1.05, 2)) and,
    unless the case fixes them, step_sizes (log-uniform [1e-7, 1e-4], [1e-2, 50]).

    Why the second-moment decay starts at 0.5: with a shorter window the denominator
    tracks |g_t| alone, and when weight decay nearly cancels the gradient (g + lambda theta
    ~ 0) the step m / |g_t| amplifies ulp differences without bound: with Adamax, beta2 =
    5e-4 and weight_decay = 0.026, two float64 implementations that differ only in the
    rounding of m drift from 1e-16 to 1e-7 apart (relative) in 200 steps.  Centered RMSprop draws alpha from [0.9, 0.999): with a short window the variance
    estimate v - g_bar^2 comes near 0 now and then and the same happens (alpha = 0.38:
    float32 torch and fusedoptim end 6e-6 apart, both 2e-6 from the float64 result).  AdaBelief draws beta1 from [0.5, 0.999) too:
    with beta1 = 0.045 its m tracks g, the belief (g - m)^2 = (beta1 (g - m_prev))^2 is a
    cancellation, and the step m / sqrt(s) turns its rounding into 1e-5 (float32)
    differences within 40 steps.  These are properties of the
    problem, not of any implementation; the tests want trajectories where "agree to 1e-5"
    is a meaningful statement.
    """
    rng = np.random.default_rng(seed)

    def logu(lo, hi):
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def uni(lo, hi):
        return float(rng.uniform(lo, hi))

    d = DEFAULTS[name]
    hp = {k: v for k, v in kwargs.items()}
    hp["lr"] = logu(1e-2, 1.0) if name == "Adadelta" else logu(1e-4, 1e-1)
    if "betas" in d:
        hp["betas"] = (uni(0.0, 0.999), uni(0.5, 0.999))
        if name == "AdaBelief":                      # its belief (g - m)^2: see below
            hp["betas"] = (uni(0.5, 0.999), uni(0.5, 0.999))
        if len(d["betas"]) == 3:                     # Adan: beta3 is the second-moment decay
            hp["betas"] = (uni(0.0, 0.999), uni(0.0, 0.999), uni(0.5, 0.999))
    if "eps" in d:
        hp["eps"] = logu(1e-8, 1e-4) if name == "Adadelta" else logu(1e-4, 1e-2) if name == "Yogi" else \
            logu(1e-10, 1e-6)
    if "alpha" in d:
        hp["alpha"] = uni(0.9, 0.999) if kwargs.get("centered") else uni(0.5, 0.999)
    if "rho" in d:
        hp["rho"] = uni(0.0, 0.999)
    if "lambd" in d:
        hp["lambd"] = logu(1e-5, 1e-2)
    if "momentum_decay" in d:
        hp["momentum_decay"] = logu(1e-3, 1e-2)
    if "learning_rate_power" in kwargs:
        hp["learning_rate_power"] = uni(-1.0, 0.0)
    for k in ("l1_regularization_strength", "l2_regularization_strength", "l2_shrinkage_regularization_strength"):
        if kwargs.get(k):
            hp[k] = logu(1e-3, 1e-1)
    if kwargs.get("beta"):
        hp["beta"] = uni(0.0, 1.0)
    if "r" in d:
        hp["r"] = uni(0.0, 1.0)
    if "etas" in d:
        hp["etas"] = (uni(0.1, 0.9), uni(1.05, 2.0))
    if "step_sizes" in d and "step_sizes" not in kwargs:
        hp["step_sizes"] = (logu(1e-7, 1e-4), logu(1e-2, 50.0))
    draw = {"weight_decay": lambda: logu(1e-4, 1e-1), "momentum": lambda: uni(0.1, 0.99),
            "dampening": lambda: uni(0.05, 1.0), "lr_decay": lambda: logu(1e-4, 1e-1),
            "initial_accumulator_value": lambda: logu(1e-2, 1.0)}
    for k in STRUCTURAL:
        if k in d and kwargs.get(k, d[k]) != 0:
            hp[k] = draw[k]()
    return hp


# ------------------------------------------------------------------------ test data
# Sizes 0, 1, 7 and 4099 (not SIMD multiples), as 0-d, 1-d and n-d arrays.
SHAPES: Tuple[tuple, ...] = ((0,), (), (7,), (4099,), (3, 1, 5), (1,))
BIG_SHAPES: Tuple[tuple, ...] = ((2 ** 20 + 3,), (7,))


def make_params(seed: int, shapes: Sequence[tuple], dtype) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def grad_stream(seed: int, shapes: Sequence[tuple], dtype, steps: int) -> Iterator[List[np.ndarray]]:
    """``steps`` lists of N(0, 1) gradients, read-only (fusedoptim must accept them and
    must not write to them)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for g in gs:
            g.flags.writeable = False
        yield gs


def build(name: str, params, **kwargs):
    """The fusedoptim optimizer ``name`` on ``params`` (arrays or group dicts)."""
    import fusedoptim
    return getattr(fusedoptim, name)(params, **kwargs)


def snapshot(opt, params) -> dict:
    """Deep copy of everything an optimizer step may change: params, state, groups, iterations."""
    state = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st is not None:
            state[i] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    groups = [{k: (list(v) if k == "params" else v) for k, v in g.items()} for g in opt.param_groups]
    return {"params": [p.copy() for p in params], "state": state, "groups": groups,
            "iterations": opt.iterations}


def assert_same_snapshot(a: dict, b: dict, same_arrays: bool = True) -> None:
    """Bit-identical (NaN == NaN), same keys, same group entries.  ``same_arrays``: both
    snapshots are of one optimizer, so group params must be the very same arrays;
    otherwise (two optimizers) only their number must match."""
    assert a["iterations"] == b["iterations"]
    assert len(a["params"]) == len(b["params"])
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        assert x.dtype == y.dtype and x.shape == y.shape, f"params[{i}]"
        assert np.array_equal(x, y, equal_nan=True), f"params[{i}] changed"
    assert sorted(a["state"]) == sorted(b["state"]), "set of parameters with state changed"
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sorted(sa) == sorted(sb), f"state[{i}] keys changed"
        for k in sa:
            if isinstance(sa[k], np.ndarray):
                assert np.array_equal(sa[k], sb[k], equal_nan=True), f"state[{i}][{k!r}] changed"
            else:
                assert sa[k] == sb[k], f"state[{i}][{k!r}] changed: {sa[k]!r} -> {sb[k]!r}"
    assert len(a["groups"]) == len(b["groups"])
    for ga, gb in zip(a["groups"], b["groups"]):
        assert sorted(ga) == sorted(gb)
        for k in ga:
            if k == "params":
                assert len(ga[k]) == len(gb[k])
                assert not same_arrays or all(x is y for x, y in zip(ga[k], gb[k])), "group params replaced"
            else:
                va, vb = ga[k], gb[k]
                same = va is vb or va == vb or (isinstance(va, float) and isinstance(vb, float)
                                                and math.isnan(va) and math.isnan(vb))
                assert same, f"group entry {k!r} changed: {va!r} -> {vb!r}"
