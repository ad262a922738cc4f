"""Parameters by name (issue 15, section 3): ``fo.Adam({"W": W, "b": b})``, named param
groups, ``opt.step({"W": gW})``, state_dicts and checkpoints keyed by name.

The reference for every named run is the same run with positional lists, which the rest
of the suite checks against float64 formulas and torch: a named run must give the same
bits, whatever the order of the dicts.
"""
import os
import re

import numpy as np
import pytest

import fusedoptim as fo
from cases import OPTIMIZERS, RICH_CASES, assert_same_snapshot, case_params, draw_hparams, seed_for, snapshot
from fusedoptim.optimizer import IncompatibleKeys

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
SHAPES = {"W": (4, 3), "b": (3,), "c": (7,)}
STEPS = 12     # enough for every buffer to be live (Rprop's sign history, ASGD with t0=10 averaging)


def arrays(seed, names=("W", "b", "c"), dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(SHAPES[n]).astype(dtype) for n in names}


def grads(seed, names=("W", "b", "c"), steps=STEPS, dtype=np.float32):
    rng = np.random.default_rng([seed, 1])
    return [{n: rng.standard_normal(SHAPES[n]).astype(dtype) for n in names} for _ in range(steps)]


def state_bits(opt, params: dict) -> dict:
    """Every parameter's state by name, copied (for bit comparisons)."""
    out = {}
    for n, p in params.items():
        st = opt.state.get(p)
        if st is not None:
            out[n] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        if isinstance(a[n], dict):
            assert_same(a[n], b[n])
        elif isinstance(a[n], np.ndarray):
            assert np.array_equal(a[n], b[n], equal_nan=True), n
        else:
            assert a[n] == b[n], n


# ---------------------------------------------------------------- named == positional
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_named_run_gives_the_positional_bits(name, kwargs):
    hp = draw_hparams(name, kwargs, seed_for(name, kwargs, "names"))
    ref, named, pairs = arrays(0), arrays(0), arrays(0)
    o_ref = getattr(fo, name)(list(ref.values()), **hp)
    o_named = getattr(fo, name)(named, **hp)
    o_pairs = getattr(fo, name)(list(pairs.items()), **hp)    # model.named_params() / named_parameters()
    assert o_named.param_names == o_pairs.param_names == ["W", "b", "c"]
    for k, g in enumerate(grads(1)):
        o_ref.step([g["W"], g["b"], g["c"]])
        o_named.step(dict(reversed(list(g.items()))) if k % 2 else g)   # the dict order does not matter
        o_pairs.step([g["W"], g["b"], g["c"]])                           # lists keep working
    for n in ref:
        assert np.array_equal(ref[n], named[n]) and np.array_equal(ref[n], pairs[n]), n
    assert_same(state_bits(o_ref, ref), state_bits(o_named, named))
    assert_same(state_bits(o_ref, ref), state_bits(o_pairs, pairs))


def test_split_decay_groups_are_named_and_step_by_name():
    ref, named = arrays(2), arrays(2)
    # the reference: the same two groups, written by hand as lists (decayed first)
    o_ref = fo.AdamW([{"params": [ref["W"]], "weight_decay": 0.1},
                      {"params": [ref["b"], ref["c"]], "weight_decay": 0.0}], lr=0.01)
    groups = fo.split_decay_groups(named, weight_decay=0.1)
    assert [list(g["params"]) for g in groups] == [["W"], ["b", "c"]]
    o = fo.AdamW(groups, lr=0.01)
    assert o.param_names == ["W", "b", "c"] and o.labels == ["'W'", "'b'", "'c'"]
    for g in grads(3):
        o_ref.step([g["W"], g["b"], g["c"]])
        o.step({"c": g["c"], "b": g["b"], "W": g["W"]})
    for n in ref:
        assert np.array_equal(ref[n], named[n]), n
    assert_same(state_bits(o_ref, ref), state_bits(o, named))


def test_nn_model_named_params_and_named_grads():
    from fusedoptim import nn
    m_ref, m = nn.MLP([5, 6, 3], rng=0), nn.MLP([5, 6, 3], rng=0)
    groups_ref = fo.split_decay_groups(m_ref.named_params(), weight_decay=1e-2)
    o_ref = fo.AdamW(groups_ref, lr=1e-2)
    grads_ref = m_ref.grads_for(groups_ref)             # a list in the groups' order
    o = fo.AdamW(fo.split_decay_groups(m.named_params(), weight_decay=1e-2), lr=1e-2)
    assert sorted(o.param_names) == sorted(n for n, _ in m.named_params())
    assert o.param_names[:2] == ["0.weight", "2.weight"]    # the decayed group first
    rng = np.random.default_rng(4)
    for _ in range(5):
        x, y = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)
        for model in (m_ref, m):
            model.backward(nn.softmax_cross_entropy(model.forward(x), y)[1])
        o_ref.step(grads_ref)
        o.step(m.named_grads())
    for p, q in zip(m_ref.params(), m.params()):
        assert np.array_equal(p, q)


# --------------------------------------------------------------- missing / unknown names
def test_a_missing_name_gets_no_gradient_this_step():
    ref, named = arrays(5), arrays(5)
    o_ref, o = fo.Adam(list(ref.values()), lr=0.1), fo.Adam(named, lr=0.1)
    b0 = named["b"].copy()
    for g in grads(6, steps=3):
        o_ref.step([g["W"], None, g["c"]])
        o.step({"W": g["W"], "c": g["c"]})
    assert np.array_equal(named["b"], b0) and named["b"] not in o.state
    assert "b" not in o.state_dict()["state"]
    for n in ref:
        assert np.array_equal(ref[n], named[n]), n
    assert_same(state_bits(o_ref, ref), state_bits(o, named))
    o.step({"b": np.ones(3, np.float32), "W": None})    # None is "no gradient" too
    assert not np.array_equal(named["b"], b0) and o.state[named["b"]]["step"] == 1
    assert o.state[named["W"]]["step"] == 3


def test_bad_names_raise_naming_them_and_change_nothing():
    named = arrays(7)
    o = fo.Adam(named, lr=0.1)
    o.step(grads(8, steps=1)[0])
    before = snapshot(o, list(named.values()))
    g = grads(9, steps=1)[0]
    with pytest.raises(ValueError, match=r"grads has a gradient for 'x', which is not a parameter .*'W', 'b', 'c'"):
        o.step(dict(g, x=np.zeros(3, np.float32)))
    with pytest.raises(TypeError, match=r"gradient of 'b': dtype float64 does not match"):
        o.step(dict(g, b=np.zeros(3)))
    with pytest.raises(ValueError, match=r"gradient of 'c': shape \(6,\) does not match"):
        o.step(dict(g, c=np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match=r"expected 3 gradients"):
        o.step([g["W"], g["b"]])
    assert_same_snapshot(before, snapshot(o, list(named.values())))
    # a dict of gradients for an optimizer whose parameters have no names
    with pytest.raises(TypeError, match=r"grads is a dict, but this optimizer's parameters have no names"):
        fo.Adam([named["W"]], lr=0.1).step({"W": g["W"]})


def test_construction_errors_use_the_names():
    W, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
    with pytest.raises(ValueError, match=r"'w2': the same array appears more than once"):
        fo.SGD({"W": W, "w2": W}, lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: the parameter name 'W' is used twice"):
        fo.SGD([{"params": {"W": W}}, {"params": {"W": b}}], lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: its parameters are unnamed.*name every parameter"):
        fo.SGD([{"params": {"W": W}}, {"params": [b]}], lr=0.1)
    with pytest.raises(TypeError, match=r"params\['params'\]: expected an array, got list; a dict is read as"):
        fo.SGD({"params": [W], "lr": 0.1}, lr=0.1)      # one group given without its list
    with pytest.raises(TypeError, match=r"parameter names must be strings, got 0"):
        fo.SGD({0: W}, lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\]: expected a \(name, array\) pair"):
        fo.SGD([("W", W), b], lr=0.1)
    o = fo.SGD({"W": W}, lr=0.1)
    with pytest.raises(ValueError, match=r"param group 1: its parameters are unnamed"):
        o.add_param_group({"params": [b]})
    o.add_param_group({"params": {"b": b}, "lr": 0.5})
    assert o.param_names == ["W", "b"] and o.param_groups[1]["lr"] == 0.5
    with pytest.raises(ValueError, match=r"adopts no new ones"):
        o.apply_gradients([(np.zeros(3, np.float32), np.zeros(3, np.float32))])


# --------------------------------------------------------------------- state_dict
def _trained(seed, order=("W", "b", "c"), **kw):
    named = arrays(seed)
    named = {n: named[n] for n in order}
    o = fo.Adam(named, lr=0.05, **kw)
    for g in grads(seed + 1, steps=4):
        o.step(g)
    return o, named


def test_state_dict_is_keyed_by_name():
    o, _ = _trained(10)
    sd = o.state_dict()
    assert sorted(sd["state"]) == ["W", "b", "c"] and sd["param_groups"][0]["params"] == ["W", "b", "c"]
    assert sd["state"]["b"]["step"] == 4 and sd["state"]["b"]["exp_avg"].shape == (3,)
    # positional optimizers keep torch's integer keys
    p = fo.Adam([np.zeros(3, np.float32)], lr=0.1)
    p.step([np.ones(3, np.float32)])
    assert list(p.state_dict()["state"]) == [0] and p.state_dict()["param_groups"][0]["params"] == [0]


def test_load_state_dict_maps_by_name_whatever_the_order_and_resumes_bit_exact():
    o, named = _trained(11)
    sd = o.state_dict()
    copy = {n: named[n].copy() for n in ("c", "W", "b")}       # reordered dict
    o2 = fo.Adam(copy, lr=0.05)
    assert o2.load_state_dict(sd) == IncompatibleKeys([], [])
    for g in grads(12, steps=5):
        o.step(g)
        o2.step(g)
    for n in named:
        assert np.array_equal(named[n], copy[n]), n
    assert_same(state_bits(o, named), state_bits(o2, copy))


def test_load_state_dict_strict_and_not_strict():
    o, _ = _trained(13)
    sd = o.state_dict()
    new = arrays(14, names=("W", "b"))
    new["d"] = np.full(5, 2.0, np.float32)
    o2 = fo.Adam(new, lr=0.5)
    o2.step({"d": np.ones(5, np.float32)})
    before = snapshot(o2, list(new.values()))
    with pytest.raises(ValueError, match=r"missing \['d'\], unexpected \['c'\].*strict=False"):
        o2.load_state_dict(sd)
    assert_same_snapshot(before, snapshot(o2, list(new.values())))
    res = o2.load_state_dict(sd, strict=False)
    assert isinstance(res, IncompatibleKeys) and res.missing_keys == ["d"] and res.unexpected_keys == ["c"]
    assert o2.param_groups[0]["lr"] == 0.05 and o2.iterations == 4
    for n in ("W", "b"):
        assert_same(state_bits(o2, {n: new[n]}), {n: sd["state"][n]})
    assert o2.state[new["d"]]["step"] == 1                     # a missing name keeps its state
    # a named state_dict needs named parameters
    with pytest.raises(ValueError, match=r"keys its parameters by name, but this optimizer's parameters have no"):
        fo.Adam([np.zeros((4, 3), np.float32)], lr=0.1).load_state_dict(sd)


def test_positional_state_dict_still_loads_into_named_parameters():
    ref = arrays(15)
    o_ref = fo.Adam(list(ref.values()), lr=0.05)
    for g in grads(16, steps=3):
        o_ref.step([g["W"], g["b"], g["c"]])
    named = {n: a.copy() for n, a in ref.items()}
    o = fo.Adam(named, lr=0.05)
    o.load_state_dict(o_ref.state_dict())             # integer keys: by position, as before
    assert_same(state_bits(o_ref, ref), state_bits(o, named))


def test_gradient_accumulation_is_saved_by_name():
    o, named = _trained(17, gradient_accumulation_steps=2)
    o.step(grads(18, steps=1)[0])                      # half a cycle
    sd = o.state_dict()
    assert o.pipeline.acc_count == 1 and set(sd["state"]["W"]) >= {"grad_accum"}
    copy = {n: named[n].copy() for n in ("b", "c", "W")}
    o2 = fo.Adam(copy, lr=0.05, gradient_accumulation_steps=2)
    o2.load_state_dict(sd)
    g = grads(19, steps=1)[0]
    o.step(g)
    o2.step(g)
    for n in named:
        assert np.array_equal(named[n], copy[n]), n


# -------------------------------------------------------------------- checkpoints
def test_save_load_round_trip_by_name_resumes_bit_exact(tmp_path):
    path = tmp_path / "ckpt.npz"
    o, named = _trained(20)
    fo.save(path, o, params=named, extra={"epoch": 3})
    copy = {n: np.zeros_like(named[n]) for n in ("c", "b", "W")}   # other order, other values
    o2 = fo.Adam(fo.split_decay_groups(copy, weight_decay=0.0), lr=0.05)   # groups go by position
    with pytest.raises(fo.checkpoint.CheckpointError, match=r"has 1 param groups, this optimizer has 2"):
        fo.load(path, o2, params=copy)
    o2 = fo.Adam(copy, lr=0.05)
    out = fo.load(path, o2, params=copy)
    assert out["version"] == 3 and out["extra"] == {"epoch": 3}
    assert out["incompatible_keys"] == IncompatibleKeys([], [])
    assert sorted(out["optimizer"]["state"]) == ["W", "b", "c"]
    for g in grads(21, steps=5):
        o.step(g)
        o2.step(g)
    for n in named:
        assert np.array_equal(named[n], copy[n]), n
    assert_same(state_bits(o, named), state_bits(o2, copy))


def test_load_checkpoint_strict_false_and_mismatches(tmp_path):
    path = tmp_path / "ckpt.npz"
    o, named = _trained(22)
    fo.save(path, o)
    other = arrays(23, names=("W", "b"))
    o2 = fo.Adam(other, lr=0.05)
    before = snapshot(o2, list(other.values()))
    with pytest.raises(fo.checkpoint.CheckpointError, match=r"missing \[\], unexpected \['c'\]"):
        fo.load(path, o2)
    assert_same_snapshot(before, snapshot(o2, list(other.values())))
    out = fo.load(path, o2, strict=False)
    assert out["incompatible_keys"] == IncompatibleKeys([], ["c"])
    assert_same(state_bits(o2, other), {n: o.state_dict()["state"][n] for n in ("W", "b")})
    wrong = {"W": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32), "c": np.zeros(7, np.float32)}
    with pytest.raises(fo.checkpoint.CheckpointError, match=r"optimizer parameter 'W': shape \(4, 3\) in"):
        fo.load(path, fo.Adam(wrong, lr=0.05))
    with pytest.raises(fo.checkpoint.CheckpointError, match=r"have names .*this optimizer's have none"):
        fo.load(path, fo.Adam([np.zeros(s, np.float32) for s in SHAPES.values()], lr=0.05))


def test_unnamed_checkpoints_keep_format_version_2(tmp_path):
    path = tmp_path / "ckpt.npz"
    ps = [np.ones(3, np.float32)]
    o = fo.Adam(ps, lr=0.1)
    o.step([np.ones(3, np.float32)])
    fo.save(path, o)
    named = {"b": np.ones(3, np.float32)}
    out = fo.load(path, fo.Adam(named, lr=0.1))        # an old, positional file into named parameters
    assert out["version"] == 2 and out["optimizer"]["state"][0]["step"] == 1


# ------------------------------------------------------------------------- README
def test_readme_named_parameters_snippet_runs():
    text = open(README, encoding="utf-8").read()
    start = text.index("## Parameters by name")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README named-parameters snippet", "exec"), scope)
    assert scope["opt"].param_names == ["W", "b"]


def test_every_optimizer_takes_a_dict():
    for name in OPTIMIZERS:
        p = {"W": np.ones(3, np.float32)}
        o = getattr(fo, name)(p, lr=0.1)
        o.step({"W": np.full(3, 0.5, np.float32)})
        assert not np.array_equal(p["W"], np.ones(3, np.float32)), name


# -------------------------------------------------------------------- distributed
def test_distributed_optimizer_takes_gradients_by_name():
    MPI = pytest.importorskip("mpi4py.MPI")
    from fusedoptim.distributed import DistributedOptimizer
    ref, named = arrays(30), arrays(30)
    d_ref = DistributedOptimizer(fo.Adam(list(ref.values()), lr=0.1), MPI.COMM_SELF)
    d = DistributedOptimizer(fo.Adam(named, lr=0.1), MPI.COMM_SELF)
    for g in grads(31, steps=3):
        d_ref.step([g["W"], None, g["c"]])
        d.step({"c": g["c"], "W": g["W"]})
    for n in ref:
        assert np.array_equal(ref[n], named[n]), n
    with pytest.raises(ValueError, match=r"gradient for 'x'"):
        d.step({"x": np.zeros(3, np.float32)})


def test_broadcast_and_steps_by_name_across_two_ranks(tmp_path):
    import shutil
    import subprocess
    import sys
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    if mpiexec is None:
        pytest.skip("mpiexec missing (pip install mpi4py mpich gives it)")
    out = tmp_path / "names.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "MPICH_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1")
    script = os.path.join(os.path.dirname(__file__), "mpi_scripts", "names.py")
    p = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", script, str(out)],
                       capture_output=True, text=True, timeout=90, env=env)
    assert p.returncode == 0, p.stderr
    r0, r1 = __import__("json").loads(out.read_text())
    assert r0["state"] == r1["state"] and r1["state"]["b"]["step"] == 3     # rank 0's state, by name
    assert r0["params"] == r1["params"] and r0["iterations"] == r1["iterations"] == 5
    # the reference in one process: rank 0's state, the mean of the two ranks' gradients
    # (a sum of two float32 arrays times 0.5: exact, whatever the reduction order)
    rng = np.random.default_rng(0)
    init = {"W": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    ref = {n: a.copy() for n, a in init.items()}
    o = fo.Adam(ref, lr=0.05)
    for k in range(3):
        o.step({"W": np.full((4, 3), 0.1 * (k + 1), np.float32), "b": np.full(3, -0.2, np.float32)})
    for n in ref:
        ref[n][...] = init[n]
    gs = [np.random.default_rng([1, r]) for r in (0, 1)]
    o.step({"W": sum(g.standard_normal((4, 3)).astype(np.float32) for g in gs) * np.float32(0.5)})
    step2 = [(g.standard_normal(3).astype(np.float32), g.standard_normal((4, 3)).astype(np.float32)) for g in gs]
    o.step({"b": (step2[0][0] + step2[1][0]) * np.float32(0.5), "W": (step2[0][1] + step2[1][1]) * np.float32(0.5)})
    for n in ref:
        assert np.array_equal(np.array(r0["params"][n], np.float32), ref[n]), n
