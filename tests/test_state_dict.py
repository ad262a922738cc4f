"""state_dict / load_state_dict: plain data, exact round trips, and validation before change."""
import copy
import math

import numpy as np
import pytest

import fusedoptim
from cases import (RICH_CASES, SHAPES, assert_same_snapshot, build, case_params, draw_hparams, grad_stream,
                   make_params, seed_for, snapshot)

PLAIN = (dict, list, tuple, int, float, bool, str, np.ndarray, type(None))


def _walk(x, path="sd"):
    assert isinstance(x, PLAIN), f"{path} is a {type(x).__name__}, not plain data"
    if isinstance(x, np.ndarray):
        assert x.dtype.kind == "f", f"{path}: dtype {x.dtype}"
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, (str, int)), f"{path} has key {k!r}"
            _walk(v, f"{path}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _walk(v, f"{path}[{i}]")


def _stepped(name, kwargs, dtype, steps, seed):
    hp = draw_hparams(name, kwargs, seed)
    params = make_params(seed, SHAPES, dtype)
    opt = build(name, params, **hp)
    stream = list(grad_stream(seed + 1, SHAPES, dtype, steps))
    return hp, params, opt, stream


# ------------------------------------------------------------------ plain data
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_state_dict_is_plain_data_and_a_copy(name, kwargs):
    hp, params, opt, stream = _stepped(name, kwargs, np.float64, 3, seed_for(name, "plain"))
    for grads in stream:
        opt.step(grads)
    sd = opt.state_dict()
    _walk(sd)
    assert {"kind", "iterations", "state", "param_groups"} <= set(sd)
    assert sd["kind"] == name and sd["iterations"] == 3
    assert sorted(sd["state"]) == list(range(len(params)))
    assert [g["params"] for g in sd["param_groups"]] == [list(range(len(params)))]
    for i, p in enumerate(params):
        st = sd["state"][i]
        assert set(st) == set(opt.state[p])
        assert isinstance(st["step"], int) and st["step"] == 3
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                live = opt.state[p][k]
                assert v is not live and not np.shares_memory(v, live) and not np.shares_memory(v, p)
                assert np.array_equal(v, live)
    # mutating the dict must not reach the optimizer
    before = snapshot(opt, params)
    for st in sd["state"].values():
        for v in st.values():
            if isinstance(v, np.ndarray):
                v[...] = 123.0
    sd["param_groups"][0]["lr"] = 99.0
    assert_same_snapshot(before, snapshot(opt, params))


def test_fresh_optimizer_state_dict():
    p = np.ones(3)
    sd = fusedoptim.Adam([p], lr=0.5).state_dict()
    assert sd["state"] == {} and sd["iterations"] == 0 and sd["kind"] == "Adam"
    assert sd["param_groups"][0]["lr"] == 0.5 and sd["param_groups"][0]["params"] == [0]


# ------------------------------------------------------------------ exact round trips
@pytest.mark.parametrize("name,kwargs", case_params())
def test_round_trip_is_bit_identical(name, kwargs, dtype):
    """k steps, state_dict, a fresh optimizer (built with default hyperparameters: the
    dict must restore them) on copies of the params, load, continue: every bit equals an
    uninterrupted run."""
    k, n = 7, 9
    hp, params, opt, stream = _stepped(name, kwargs, dtype, k + n, seed_for(name, kwargs, dtype.name, "rt"))
    for grads in stream[:k]:
        opt.step(grads)
    sd = opt.state_dict()
    copies = [p.copy() for p in params]
    fresh = build(name, copies)
    fresh.load_state_dict(sd)
    assert fresh.iterations == k
    for g_new, g_old in zip(fresh.param_groups, opt.param_groups):
        assert {a: b for a, b in g_new.items() if a != "params"} == {a: b for a, b in g_old.items() if a != "params"}
    for grads in stream[k:]:
        opt.step(grads)
        fresh.step(grads)
    assert_same_snapshot(snapshot(opt, params), snapshot(fresh, copies), same_arrays=False)


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_round_trip_with_groups_and_partial_state(name, kwargs):
    """Two groups, one parameter never stepped (no state entry), schedule-free lr change."""
    dtype = np.dtype(np.float32)
    hp = draw_hparams(name, kwargs, seed_for(name, "groups-rt"))
    params = make_params(3, SHAPES, dtype)
    groups = [dict(params=params[:2], **hp), dict(params=params[2:], lr=hp["lr"] / 3)]
    opt = build(name, groups)
    stream = list(grad_stream(4, SHAPES, dtype, 10))
    for grads in stream[:4]:
        opt.step([g if i != 4 else None for i, g in enumerate(grads)])
    sd = opt.state_dict()
    assert 4 not in sd["state"]
    copies = [p.copy() for p in params]
    fresh = build(name, [dict(params=copies[:2]), dict(params=copies[2:])])
    fresh.load_state_dict(sd)
    assert copies[4] not in fresh.state
    for grads in stream[4:]:
        opt.step(grads)
        fresh.step(grads)
    assert_same_snapshot(snapshot(opt, params), snapshot(fresh, copies), same_arrays=False)


def test_load_replaces_existing_state():
    a = [np.ones(4), np.ones(2)]
    src = fusedoptim.Adam([x.copy() for x in a])
    src.step([np.ones(4), None])
    dst = fusedoptim.Adam(a)
    for _ in range(3):
        dst.step([np.ones(4), np.ones(2)])
    dst.load_state_dict(src.state_dict())
    assert dst.iterations == 1 and dst.state[a[0]]["step"] == 1 and a[1] not in dst.state


def test_schedule_resumes_from_loaded_iterations():
    calls = []

    def sched(it):
        calls.append(it)
        return 0.1

    p = np.ones(3)
    opt = fusedoptim.SGD([p], lr=sched)
    for _ in range(4):
        opt.step([np.ones(3)])
    sd = opt.state_dict()
    q = p.copy()
    fresh = fusedoptim.SGD([q], lr=sched)
    fresh.load_state_dict(sd)
    calls.clear()
    fresh.step([np.ones(3)])
    assert calls == [4]


# ------------------------------------------------------------------ dtype casting
def test_state_arrays_cast_to_param_dtype_and_copied():
    p64 = [np.ones(5), np.ones((2, 3))]
    src = fusedoptim.Adam(p64, amsgrad=True)
    for _ in range(3):
        src.step([np.full(5, 0.3), np.full((2, 3), -0.7)])
    sd = src.state_dict()
    # a Fortran-ordered view and an integer array are accepted and become C-contiguous copies
    sd["state"][1]["exp_avg"] = np.asfortranarray(sd["state"][1]["exp_avg"])
    sd["state"][0]["max_exp_avg_sq"] = np.arange(5)
    p32 = [x.astype(np.float32) for x in p64]
    dst = fusedoptim.Adam(p32, amsgrad=True)
    dst.load_state_dict(sd)
    for i, p in enumerate(p32):
        for k, v in dst.state[p].items():
            if k == "step":
                assert v == 3 and isinstance(v, int)
                continue
            assert v.dtype == np.float32 and v.flags.c_contiguous and v.shape == p.shape, (i, k)
            assert not np.shares_memory(v, sd["state"][i][k])
            np.testing.assert_array_equal(v, sd["state"][i][k].astype(np.float32))
    dst.step([np.ones(5, np.float32), np.ones((2, 3), np.float32)])
    assert all(np.isfinite(p).all() for p in p32)


def test_scalar_state_from_numpy_and_0d_arrays():
    """torch state dicts carry step/mu_product as 0-d tensors; converted they are 0-d arrays."""
    p = np.ones(3)
    src = fusedoptim.NAdam([p.copy()])
    src.step([np.ones(3)])
    sd = src.state_dict()
    sd["state"][0]["step"] = np.array(1.0)
    sd["state"][0]["mu_product"] = np.float64(sd["state"][0]["mu_product"])
    dst = fusedoptim.NAdam([p])
    dst.load_state_dict(sd)
    assert dst.state[p]["step"] == 1 and isinstance(dst.state[p]["step"], int)
    assert isinstance(dst.state[p]["mu_product"], float)


# ------------------------------------------------------------------ validation
def _sd(**changes):
    def make(sd):
        sd = copy.deepcopy(sd)
        for path, value in changes.items():
            *keys, last = path.split("/")
            d = sd
            for k in keys:
                d = d[int(k) if k.isdigit() else k]
            last = int(last) if last.isdigit() else last
            if value is _DELETE:
                del d[last]
            else:
                d[last] = value(d.get(last) if isinstance(d, dict) else d[last]) if callable(value) else value
        return sd
    return make


_DELETE = object()


def _bad_state_dicts():
    def extra_group(sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"].append(dict(sd["param_groups"][0], params=[99]))
        return sd

    def from_sgd(sd):
        other = fusedoptim.SGD([np.ones(5), np.ones((2, 3))], momentum=0.9)
        other.step([np.ones(5), np.ones((2, 3))])
        return other.state_dict()

    def from_sgd_without_kind(sd):
        out = from_sgd(sd)
        del out["kind"]
        return out

    def unknown_param(sd):
        sd = copy.deepcopy(sd)
        sd["state"][7] = sd["state"][0]
        return sd

    return [
        ("wrong kind", _sd(kind="SGD"), ValueError, r"SGD.*not Adam"),
        ("whole dict of another optimizer", from_sgd, ValueError, r"SGD"),
        ("another optimizer, kind removed", from_sgd_without_kind, ValueError, r"unknown hyperparameter.*momentum"),
        ("not a dict", lambda sd: [sd], ValueError, r"state_dict must be a dict"),
        ("unknown top-level key", _sd(extra_thing=1), ValueError, r"unknown key.*extra_thing"),
        ("no param_groups", _sd(param_groups=_DELETE), ValueError, r"param_groups"),
        ("other group count", extra_group, ValueError, r"2 param groups.*has 1"),
        ("other param count", _sd(**{"param_groups/0/params": [0]}), ValueError, r"group 0 has 1 params.*has 2"),
        ("unknown hyperparameter", _sd(**{"param_groups/0/momentum": 0.9}), ValueError,
         r"group 0.*unknown hyperparameter.*momentum"),
        ("invalid hyperparameter", _sd(**{"param_groups/0/lr": -1.0}), ValueError, r"group 0.*lr"),
        ("NaN beta", _sd(**{"param_groups/0/betas": (float("nan"), 0.9)}), ValueError, r"group 0.*beta"),
        ("non-bool flag", _sd(**{"param_groups/0/amsgrad": "yes"}), TypeError, r"group 0.*amsgrad"),
        ("unknown state key", _sd(**{"state/0/momentum_buffer": np.zeros(5)}), ValueError,
         r"state\[0\].*unknown state key.*momentum_buffer"),
        ("state for an unknown param", unknown_param, ValueError, r"param 7"),
        ("wrong shape", _sd(**{"state/1/exp_avg": np.zeros(6)}), ValueError, r"state\[1\]\['exp_avg'\].*shape"),
        ("transposed shape", _sd(**{"state/1/exp_avg_sq": np.zeros((3, 2))}), ValueError, r"state\[1\].*shape"),
        ("string dtype", _sd(**{"state/0/exp_avg": np.array(["a"] * 5)}), TypeError,
         r"state\[0\]\['exp_avg'\].*dtype"),
        ("complex dtype", _sd(**{"state/0/exp_avg": np.zeros(5, complex)}), TypeError, r"state\[0\].*dtype"),
        ("object dtype", _sd(**{"state/0/exp_avg": np.array([None] * 5)}), TypeError, r"state\[0\].*dtype"),
        ("negative step", _sd(**{"state/0/step": -1}), ValueError, r"state\[0\]\['step'\].*non-negative"),
        ("fractional step", _sd(**{"state/0/step": 1.5}), ValueError, r"state\[0\]\['step'\]"),
        ("NaN step", _sd(**{"state/0/step": float("nan")}), ValueError, r"state\[0\]\['step'\]"),
        ("step array", _sd(**{"state/0/step": np.array([1, 2])}), ValueError, r"state\[0\]\['step'\].*scalar"),
        ("negative iterations", _sd(iterations=-3), ValueError, r"iterations"),
        ("state entry not a dict", _sd(**{"state/0": 5}), ValueError, r"state\[0\]"),
    ]


BAD = _bad_state_dicts()


@pytest.mark.parametrize("make,exc,match", [pytest.param(m, e, r, id=i) for i, m, e, r in BAD])
def test_load_validates_before_changing_anything(make, exc, match):
    params = [np.ones(5), np.ones((2, 3))]
    opt = fusedoptim.Adam(params, lr=1e-2, amsgrad=True)
    src = fusedoptim.Adam([p.copy() for p in params], lr=3e-2, amsgrad=True)
    for t in range(3):
        grads = [np.full(5, 0.1 * t + 0.2), np.full((2, 3), -0.3)]
        opt.step(grads)
        src.step(grads)
        src.step(grads)
    bad = make(src.state_dict())
    before = snapshot(opt, params)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(bad)
    assert_same_snapshot(before, snapshot(opt, params))
    # and the optimizer still works
    opt.step([np.ones(5), np.ones((2, 3))])
    assert opt.iterations == 4


def test_load_error_in_second_group_changes_nothing():
    """Validation covers every group before any group is written."""
    a, b = np.ones(3), np.ones(3)
    opt = fusedoptim.SGD([dict(params=[a], lr=0.1), dict(params=[b], lr=0.2)], momentum=0.9)
    opt.step([np.ones(3), np.ones(3)])
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.5
    sd["param_groups"][1]["lr"] = float("nan")
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="group 1"):
        opt.load_state_dict(sd)
    assert_same_snapshot(before, snapshot(opt, [a, b]))
    assert opt.param_groups[0]["lr"] == 0.1


def test_nan_in_state_buffer_is_data_not_an_error():
    """Buffers are data: a NaN moment loads (torch does the same) and propagates."""
    p = np.ones(2)
    src = fusedoptim.Adam([p.copy()])
    src.step([np.ones(2)])
    sd = src.state_dict()
    sd["state"][0]["exp_avg"][0] = np.nan
    opt = fusedoptim.Adam([p])
    opt.load_state_dict(sd)
    opt.step([np.ones(2)])
    assert math.isnan(p[0]) and np.isfinite(p[1])
