"""ParamArena / GradArena: layout, alignment, and flat-vs-per-tensor equivalence for every
optimizer (trajectories and state_dict conversions)."""
import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.arena import GradArena, ParamArena

# One table drives the equivalence tests: every optimizer, every flag that changes the
# buffers it keeps or the arithmetic it does.
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=1e-2)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.9, weight_decay=0.01)),
    ("Adamax", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2)),
    ("NAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-2)),
    ("Adadelta", dict(lr=1.0, weight_decay=0.01)),
    ("Rprop", dict(lr=1e-2, step_sizes=(1e-3, 0.05))),
    ("Lion", dict(lr=1e-3, weight_decay=0.1, maximize=True)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CASES]

# Sizes that are not SIMD multiples, a 0-d and an empty tensor, so padding is everywhere.
SHAPES = {"W1": (7, 13), "b1": (13,), "scale": (), "empty": (0, 3), "W2": (13, 1), "b2": (1,), "big": (4099,)}

# 25 steps: past Adam's bias-correction transient and RAdam's switch to the rectified
# update (rho_t > 5 from step 6), short enough to keep the table fast.
STEPS = 25


def _model(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grad_stream(dtype, n, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()} for _ in range(n)]


# ---------------------------------------------------------------------------- layout
def test_layout_alignment_views_and_padding():
    params = _model(np.float32)
    orig = {k: v.copy() for k, v in params.items()}
    arena = ParamArena(params)
    assert arena.flat.ctypes.data % 64 == 0
    assert arena.flat.dtype == np.float32 and arena.flat.ndim == 1
    assert arena.flat.size % 16 == 0  # tail padded to the alignment too
    for name, shape in SHAPES.items():
        v = arena[name]
        assert v.shape == shape and v.dtype == np.float32
        assert v.ctypes.data % 64 == 0, name
        assert np.shares_memory(v, arena.flat) or v.size == 0
        np.testing.assert_array_equal(v, orig[name])
        assert params[name] is v  # the caller's dict now holds the views
        assert arena.views[name] is v
    assert [id(p) for p in arena.params()] == [id(arena[n]) for n in SHAPES]
    assert list(arena) == list(SHAPES) and len(arena) == len(SHAPES) and "W1" in arena
    assert arena.numel == sum(int(np.prod(s)) for s in SHAPES.values())
    pad = arena.padding_mask()
    assert pad.sum() == arena.flat.size - arena.numel
    assert not arena.flat[pad].any()
    for name, shape, off in arena.layout:
        assert off * 4 % 64 == 0


def test_list_input_dtype_and_errors():
    W = np.arange(6).reshape(2, 3)  # integers become float64
    b = [1.0, 2.0]
    lst = [W, b]
    arena = ParamArena(lst)
    assert arena.dtype == np.float64 and arena.names == (0, 1)
    assert lst[0] is arena[0] and lst[1] is arena[1]
    np.testing.assert_array_equal(arena[0], W)
    assert ParamArena((np.zeros(3, np.float16),)).dtype == np.float32
    assert ParamArena([np.zeros(3, np.float32), np.zeros(2)]).dtype == np.float64
    assert ParamArena([np.zeros(3)], dtype=np.float32).flat.dtype == np.float32
    assert ParamArena([np.zeros(3)], align=8).flat.size == 3
    with pytest.raises(ValueError, match="at least one"):
        ParamArena({})
    with pytest.raises(TypeError, match="single ndarray"):
        ParamArena(np.zeros(3))
    with pytest.raises(TypeError, match="complex128"):
        ParamArena([np.zeros(3, complex)])
    with pytest.raises(TypeError, match="float32 or float64"):
        ParamArena([np.zeros(3)], dtype=np.int32)
    with pytest.raises(ValueError, match="power of two"):
        ParamArena([np.zeros(3)], align=48)
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        arena["nope"]


def test_grad_arena_layout_zero_and_unflatten():
    arena = ParamArena(_model(np.float64))
    g = arena.grad_arena()
    assert isinstance(g, GradArena) and g.same_layout(arena) and arena.same_layout(g)
    assert not np.shares_memory(g.flat, arena.flat)
    assert g.flat.ctypes.data % 64 == 0 and g.flat.shape == arena.flat.shape
    for name, shape in SHAPES.items():
        assert g[name].shape == shape and g[name].ctypes.data % 64 == 0
    np.matmul(np.ones((7, 1)), np.ones((1, 13)), out=g["W1"])  # backprop writes in place
    g["b1"][...] = 2.0
    assert g.flat.sum() == 7 * 13 + 2 * 13
    assert not g.flat[g.padding_mask()].any()
    assert [id(x) for x in g.grads()] == [id(g[n]) for n in SHAPES]
    assert g.zero_() is g and not g.flat.any()
    assert arena.zeros_like_grads().same_layout(arena)
    # unflatten gives views of any flat array; flatten is its inverse
    x = arena.like(3.0)
    named = arena.unflatten(x)
    assert all(np.shares_memory(v, x) for v in named.values() if v.size)
    named["b2"][...] = 7.0
    assert x[arena.layout[-2][2]] == 7.0
    y = arena.flatten({k: np.full(s, 5.0) for k, s in SHAPES.items()})
    assert not y[arena.padding_mask()].any() and (y[~arena.padding_mask()] == 5.0).all()
    np.testing.assert_array_equal(arena.flatten(arena.params()), arena.flat)
    with pytest.raises(ValueError, match="1-D array of"):
        arena.unflatten(np.zeros(3))
    with pytest.raises(ValueError, match="missing"):
        arena.flatten({"W1": np.zeros((7, 13))})
    with pytest.raises(ValueError, match="shape"):
        arena.flatten([np.zeros(2)] * len(SHAPES))
    with pytest.raises(TypeError):
        GradArena(object())


# ----------------------------------------------------------- flat == per tensor
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_flat_equals_per_tensor(name, kw, dtype):
    cls = getattr(fo, name)
    a_flat = ParamArena(_model(dtype))
    a_per = ParamArena(_model(dtype))
    g_flat, g_per = a_flat.grad_arena(), a_per.grad_arena()
    o_flat = cls([a_flat.flat], **kw)
    o_per = cls(a_per.params(), **kw)
    for grads in _grad_stream(dtype, STEPS):
        a_flat.flatten(grads, out=g_flat.flat)
        for k, v in grads.items():
            g_per[k][...] = v
        o_flat.step([g_flat.flat])
        o_per.step(g_per.grads())
    np.testing.assert_array_equal(a_flat.flat, a_per.flat)  # bit for bit, padding included
    assert not a_flat.flat[a_flat.padding_mask()].any()
    named = a_flat.named_state(o_flat)
    for k in SHAPES:
        st = o_per.state[a_per[k]]
        assert set(named[k]) == set(st)
        for key, v in st.items():
            np.testing.assert_array_equal(named[k][key], v, err_msg=f"{k}.{key}")


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_state_dict_round_trips(name, kw):
    """Flat checkpoint -> per-tensor optimizer (split) and back (merge), and a plain flat
    round trip: all continue exactly like the uninterrupted flat run."""
    cls = getattr(fo, name)
    stream = _grad_stream(np.float64, 12)
    ref = ParamArena(_model(np.float64))
    gref = ref.grad_arena()
    oref = cls([ref.flat], **kw)
    for grads in stream[:6]:
        oref.step([ref.flatten(grads, out=gref.flat)])
    sd = oref.state_dict()
    snapshot = ref.flat.copy()

    flat2 = ParamArena(_model(np.float64, seed=5))
    flat2.flat[...] = snapshot
    o_flat2 = cls([flat2.flat], **kw)
    o_flat2.load_state_dict(sd)

    per = ParamArena(_model(np.float64, seed=6))
    per.flat[...] = snapshot
    o_per = cls(per.params(), **kw)
    o_per.load_state_dict(ref.split_state_dict(sd))
    gper = per.grad_arena()

    merged = ParamArena(_model(np.float64, seed=7))
    merged.flat[...] = snapshot
    o_merged = cls([merged.flat], **kw)
    o_merged.load_state_dict(per.merge_state_dict(o_per.state_dict()))

    for grads in stream[6:]:
        oref.step([ref.flatten(grads, out=gref.flat)])
        o_flat2.step([gref.flat])
        o_merged.step([gref.flat])
        per.flatten(grads, out=gper.flat)
        o_per.step(gper.grads())
    for other in (flat2, per, merged):
        np.testing.assert_array_equal(other.flat, ref.flat)
    assert o_per.iterations == oref.iterations == o_merged.iterations == 12


def test_split_merge_validation():
    arena = ParamArena({"a": np.zeros(3), "b": np.zeros(2)})
    other = np.zeros(4)
    two = fo.Adam([arena.flat, other])
    with pytest.raises(ValueError, match="exactly one"):
        arena.split_state_dict(two.state_dict())
    fresh = fo.Adam([arena.flat])
    sd = arena.split_state_dict(fresh.state_dict())
    assert sd["state"] == {} and sd["param_groups"][0]["params"] == [0, 1]
    per = fo.Adam(arena.params())
    per.step([np.ones(3), None])  # b never stepped: no single flat state exists
    with pytest.raises(ValueError, match=r"\['b'\] have no optimizer state"):
        arena.merge_state_dict(per.state_dict())
    per.step([np.ones(3), np.ones(2)])  # now b has step 1, a has step 2
    with pytest.raises(ValueError, match="state 'step' differs"):
        arena.merge_state_dict(per.state_dict())
    with pytest.raises(ValueError, match="neither"):
        arena.named_state(fo.Adam([np.zeros(3)]))
    assert arena.named_state(fresh) == {"a": {}, "b": {}}


def test_flat_optimizer_keeps_views_in_sync():
    """The views stay live: a step on the flat buffer is visible through arena[name], and
    padding stays zero with zero gradients even under weight decay."""
    params = {"W": np.ones((3, 3), np.float32), "b": np.ones(3, np.float32)}
    arena = ParamArena(params)
    g = arena.grad_arena()
    opt = fo.AdamW([arena.flat], lr=0.1, weight_decay=0.5)
    g["W"][...] = 1.0
    opt.step([g.flat])
    assert (params["W"] < 1.0).all()  # moved by the update
    assert (params["b"] < 1.0).all()  # decoupled decay alone moves b
    assert not arena.flat[arena.padding_mask()].any()
