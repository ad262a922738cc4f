"""8-bit block-wise state (issue 12): ``state_dtype="int8"``.

The references are independent of the library's kernels:

- the code maps are written here from their definition (Dettmers et al. 2022; the
  decades of bitsandbytes' ``create_dynamic_map``) and compared with the library's and,
  when installed, with bitsandbytes' own;
- quantization is written here in NumPy from its definition (block absmax, the nearest
  code by the float32 midpoints, ties to the smaller magnitude; stochastic between the two
  neighbouring codes with the documented hash bits);
- trajectories: the float64 rules of ``reference.py``; after every step each state buffer
  is quantized by the NumPy quantizer (from its float32 value) and read back, as the storage
  does.

The kernel computes the rule in float32 and the reference in float64, so a value within
float32 rounding of a midpoint may pick the other code: codes agree to one code, almost
all of them exactly (the tests count), absmax to float32 rounding.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from cases import RICH_CASES, case_params, draw_hparams, grad_stream, make_params, seed_for
from reference import BUFFERS, DEFAULTS, RULES

import fusedoptim
from fusedoptim import _kernels
from fusedoptim.lowp import code_map, dequantize, quantize, signed_buffers

from test_lowprec import _hash32, _subkeys


# ------------------------------------------------------------------ the code maps, written here
def map_from_definition(signed: bool) -> np.ndarray:
    """0, then per decade i = 0..6 the midpoints of linspace(0.1, 1, n + 1) times 10^(i-6)
    (n = 2^i signed, 2^(i+1) unsigned), mirrored when signed, then 1: 256 sorted values."""
    pos = []
    for i in range(7):
        n = 2 ** i if signed else 2 ** (i + 1)
        b = np.linspace(0.1, 1.0, n + 1)
        pos += list((10.0 ** (i - 6)) * (b[:-1] + b[1:]) / 2)
    vals = [0.0, 1.0] + pos + ([-v for v in pos] if signed else [])
    return np.array(sorted(vals), dtype=np.float64)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_maps_follow_the_definition(signed):
    want = map_from_definition(signed)
    got = code_map(signed)
    assert got.dtype == np.float32 and got.shape == (256,)
    np.testing.assert_allclose(got, want, rtol=2 ** -23, atol=0)
    assert np.all(np.diff(got) > 0)
    zero = 127 if signed else 0
    assert got[zero] == 0.0 and got[255] == 1.0
    if signed:
        assert got[0] == -got[254]              # mirrored, with no -1
    t = _kernels.q8_tables(signed)
    mag = t["mag"].astype(np.float64)
    np.testing.assert_array_equal(t["mid"], ((mag[:-1] + mag[1:]) / 2).astype(np.float32))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_code_maps_equal_bitsandbytes(signed):
    pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    theirs = F.create_dynamic_map(signed=signed).numpy()
    np.testing.assert_allclose(code_map(signed), theirs, rtol=2 ** -22, atol=0)


# ------------------------------------------------------------------ quantization, written here
def _tables(signed):
    t = _kernels.q8_tables(signed)
    return t["mag"], t["mid"], t["gap"]


def q_ref(v, signed: bool, block: int, bits=None):
    """(codes, absmax) of float32 values ``v``: absmax per block, a = min(|v| / absmax, 1)
    in float32 (v times the float32 reciprocal), nearest magnitude index #{mid < a} or, with
    16-bit ``bits``, the lower neighbour plus one when bits / 2^16 * gap < a - lower."""
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = v.size
    nb = -(-n // block)
    mag, mid, gap = _tables(signed)
    codes = np.zeros(n, np.uint8)
    amax = np.zeros(nb, np.float32)
    for b in range(nb):
        x = v[b * block:(b + 1) * block]
        m = np.float32(np.max(np.abs(x))) if not np.isnan(x).any() else np.float32(np.nan)
        amax[b] = m
        inv = np.float32(1) / m if (m > 0 and np.isfinite(m)) else np.float32(0)
        y = x * inv
        a = np.minimum(np.abs(y), np.float32(1))
        if bits is None:
            k = np.searchsorted(mid, a, side="left")
        else:
            k = np.searchsorted(mag, a, side="right") - 1
            r = bits[b * block:(b + 1) * block].astype(np.float32) * np.float32(2 ** -16)
            g = np.append(gap, np.float32(0))[k]
            k = k + (r * g < a - mag[k])
        if signed:
            c = np.where(y < 0, 127 - np.minimum(k, 127), 127 + k)
        else:
            c = np.where(y > 0, np.maximum(k, 1), 0)     # a positive value never reads back as 0
        codes[b * block:(b + 1) * block] = c
    return codes, amax


def dq_ref(codes, amax, signed: bool, block: int):
    m = map_from_definition(signed).astype(np.float32)
    a = np.repeat(amax, block)[:codes.size]
    return m[codes.reshape(-1)] * a


def test_quantize_matches_the_numpy_definition():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(5000) * 10.0 ** rng.integers(-8, 3, 5000)).astype(np.float32)
    x[:256] = 0.0                              # a block of zeros
    x[300] = 0.5 * (code_map(True)[200] + code_map(True)[201])   # near a midpoint
    for signed in (True, False):
        v = x if signed else np.abs(x)
        for block in (64, 256, 4096):
            codes, amax = quantize(v, signed, block)
            wc, wa = q_ref(v, signed, block)
            np.testing.assert_array_equal(amax, wa)
            np.testing.assert_array_equal(codes, wc)
            back = dequantize(codes, amax, signed, block)
            np.testing.assert_array_equal(back, dq_ref(codes, amax, signed, block))
            # the nearest code (unsigned, for v > 0: of the nonzero codes): no other is closer (float64 distances), up to the
            # float32 rounding of v / absmax and of the midpoints
            scale = np.repeat(amax, block)[:v.size].astype(np.float64)
            allv = code_map(signed).astype(np.float64)[None, :] * scale[:, None]
            dist = np.abs(allv - v[:, None])
            if not signed:                     # a positive value never takes code 0
                dist[v > 0, 0] = np.inf
            best = np.min(dist, axis=1)
            err = np.abs(back.astype(np.float64) - v)
            assert np.all(err <= best + 2 ** -22 * scale)


def test_unsigned_map_clamps_negatives_and_nan_blocks_read_back_nan():
    v = np.full(300, 2.0, np.float32)
    v[5] = -1.0
    v[280] = np.nan
    codes, amax = quantize(v, False, 256)
    assert codes[5] == 0 and amax[0] == 2.0 and np.isnan(amax[1])
    back = dequantize(codes, amax, False, 256)
    assert back[5] == 0.0 and np.all(np.isnan(back[256:]))


# ------------------------------------------------------------------ trajectories
def _bits(seed, step, tensor, n, slot):
    """The 16 random bits of state buffer slot ``slot`` (the bfloat16 hash, lowp.h)."""
    k = _subkeys(seed, step, tensor)[slot // 2]
    h = _hash32(np.arange(n, dtype=np.uint64).astype(np.uint32) ^ np.uint32(k))
    return (h >> np.uint32(16 * (slot % 2))) & np.uint32(0xFFFF)


def _full(name, hp):
    full = {**DEFAULTS[name], **hp}
    return {k: (tuple(float(b) for b in v) if isinstance(v, (tuple, list)) else
                v if isinstance(v, (bool, np.bool_)) else float(v)) for k, v in full.items()}


def _ref_run(name, hp, params, grads_seq, *, signed, block, min_size, seed=0, stochastic=False):
    """reference.py's float64 rule; after each step every buffer of a parameter with at
    least ``min_size`` elements is quantized (from its float32 value) and read back."""
    ps = [p.astype(np.float64).reshape(-1) for p in params]
    states = [{"step": 0} for _ in ps]
    codes = [dict() for _ in ps]
    full = _full(name, hp)
    for grads in grads_seq:
        for i, (p, g) in enumerate(zip(ps, grads)):
            s = states[i]
            p[...] = RULES[name](p, g.astype(np.float64).reshape(-1), s, **full)
            kept = [b for b in BUFFERS[name] if b in s]
            if p.size < min_size:
                s.update({b: s[b].astype(np.float32).astype(np.float64) for b in kept})
                continue
            for b in kept:
                slot = kept.index(b)
                bits = _bits(seed, s["step"], i, p.size, slot) if stochastic else None
                c, a = q_ref(s[b].astype(np.float32), b in signed, block, bits)
                codes[i][b] = (c, a)
                s[b] = dq_ref(c, a, b in signed, block).astype(np.float64)
    return ps, states, codes


# Ftrl's weights are computed from its accumulators (a cancellation that one code's
# difference moves by tens of percent), and schedule-free keeps the weights themselves in z:
# both are held only to the thread and resume tests below.
TRACKED = [(n, kw) for n, kw in RICH_CASES if n not in ("Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD")]


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("name,kwargs", case_params(TRACKED))
def test_int8_state_tracks_the_quantized_float64_reference(name, kwargs, stochastic):
    hp = draw_hparams(name, kwargs, seed_for("int8", name, kwargs))
    shapes = [(4099,), (7,), (64, 70)]       # a short last block; a float32-state tensor; 70 blocks of 64
    params = make_params(seed_for("p", name), shapes, np.float32)
    steps = 10
    grads = list(grad_stream(seed_for("g", name), shapes, np.float32, steps))
    mine = [p.copy() for p in params]
    opt = getattr(fusedoptim, name)(mine, **hp, state_dtype="int8", block_size=64, min_8bit_size=100, seed=11,
                                    rounding="stochastic" if stochastic else "nearest")
    for gs in grads:
        opt.step(gs)
    signed = set(signed_buffers(opt))
    ref_p, ref_s, ref_c = _ref_run(name, hp, params, grads, signed=signed, block=64, min_size=100, seed=11,
                                   stochastic=stochastic)
    equal = total = 0
    for i, p in enumerate(mine):
        st = opt.state[p]
        if p.size < 100:
            for b in (b for b in BUFFERS[name] if b in ref_s[i]):
                assert st[b].dtype == np.float32 and b + "_absmax" not in st
                np.testing.assert_allclose(st[b].reshape(-1), ref_s[i][b], rtol=1e-3, atol=1e-6)
            continue
        for b, (wc, wa) in ref_c[i].items():
            c, a = st[b].reshape(-1), st[b + "_absmax"]
            assert c.dtype == np.uint8 and a.dtype == np.float32 and a.shape == (-(-p.size // 64),)
            np.testing.assert_allclose(a, wa, rtol=1e-4, atol=1e-30, err_msg=f"{name} {b} absmax")
            # nearest: a value within float32 rounding of a midpoint takes the other neighbour;
            # stochastic: the lower neighbour may differ by one too, and then the draw
            diff = np.abs(c.astype(int) - wc.astype(int))
            assert diff.max() <= (2 if stochastic else 1), f"{name} {b}: a code differs by {diff.max()}"
            equal += int(np.sum(diff == 0))
            total += c.size
        # a code that differs moves its element's next update (a small second moment in a
        # denominator most): almost every parameter agrees closely
        close = np.isclose(p.reshape(-1), ref_p[i], rtol=1e-3, atol=2e-3 * max(hp["lr"], 1e-3))
        assert close.mean() >= 0.995, f"{name} params[{i}]: {np.sum(~close)} of {close.size} differ"
        assert np.all(np.isfinite(p))
    assert equal >= 0.99 * total, f"{name}: only {equal}/{total} codes equal the reference's"


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_bits_identical_for_one_and_two_threads(name, kwargs):
    hp = draw_hparams(name, kwargs, seed_for("thr8", name))
    shapes = [(2 ** 18 + 3,), (7,), (4099,), (70000,)]
    runs = []
    try:
        for threads, grain in ((1, 1 << 16), (2, 1), (2, 1000)):
            fusedoptim.set_num_threads(threads)
            _kernels.set_grain_size(grain)
            ps = make_params(1, shapes, np.float32)
            opt = getattr(fusedoptim, name)(ps, **hp, state_dtype="int8", rounding="stochastic", seed=4)
            for gs in grad_stream(2, shapes, np.float32, 3):
                opt.step(gs)
            runs.append(([p.copy() for p in ps], [{k: v.copy() for k, v in opt.state[p].items()
                                                    if isinstance(v, np.ndarray)} for p in ps]))
    finally:
        fusedoptim.set_num_threads(0)
        _kernels.set_grain_size(1 << 16)
    for other in runs[1:]:
        for a, b in zip(runs[0][0], other[0]):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        for sa, sb in zip(runs[0][1], other[1]):
            assert sa.keys() == sb.keys()
            for k in sa:
                np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def _run(name, hp, params, grads, **kw):
    opt = getattr(fusedoptim, name)(params, **hp, state_dtype="int8", **kw)
    for gs in grads:
        opt.step(gs)
    return opt


def _same_state(oa, a, ob, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32))
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == sb[k].dtype
                np.testing.assert_array_equal(v.view(np.uint8), sb[k].view(np.uint8), err_msg=k)
            else:
                assert v == sb[k]


@pytest.mark.parametrize("name,kwargs", case_params(RICH_CASES))
def test_resume_from_state_dict_is_bit_exact(name, kwargs):
    # N = 6 steps, save, load into a fresh optimizer, M = 4 more == 10 straight
    hp = draw_hparams(name, kwargs, seed_for("resume8", name))
    shapes = [(4099,), (7,), (5000,)]
    grads = list(grad_stream(3, shapes, np.float32, 10))
    a = make_params(4, shapes, np.float32)
    oa = _run(name, hp, a, grads, seed=5, rounding="stochastic", block_size=128)
    b = make_params(4, shapes, np.float32)
    ob = _run(name, hp, b, grads[:6], seed=5, rounding="stochastic", block_size=128)
    sd = ob.state_dict()
    c = [p.copy() for p in b]
    oc = getattr(fusedoptim, name)(c, **hp, state_dtype="int8", seed=5, rounding="stochastic", block_size=128)
    oc.load_state_dict(sd)
    for gs in grads[6:]:
        oc.step(gs)
    _same_state(oa, a, oc, c)


def test_resume_through_fo_save_and_load_is_bit_exact(tmp_path):
    shapes = [(4099,), (300,), (10000,)]
    grads = list(grad_stream(7, shapes, np.float32, 9))
    a = make_params(8, shapes, np.float32)
    oa = _run("AdamW", dict(lr=1e-2), a, grads)
    b = make_params(8, shapes, np.float32)
    ob = _run("AdamW", dict(lr=1e-2), b, grads[:5])
    fusedoptim.save(tmp_path / "ck", optimizer=ob)
    c = [p.copy() for p in b]
    oc = fusedoptim.AdamW(c, lr=1e-2, state_dtype="int8")
    fusedoptim.load(tmp_path / "ck", optimizer=oc)
    assert oc.state[c[0]]["exp_avg"].dtype == np.uint8
    for gs in grads[5:]:
        oc.step(gs)
    _same_state(oa, a, oc, c)


# ------------------------------------------------------------------ layout, sizes, memory
def test_min_8bit_size_boundary_and_layout():
    ps = [np.ones(4095, np.float32), np.ones(4096, np.float32), np.ones((3, 2000), np.float32)]
    opt = fusedoptim.Adam(ps, lr=1e-3, state_dtype="int8")
    opt.step([np.full_like(p, 0.5) for p in ps])
    s0, s1, s2 = (opt.state[p] for p in ps)
    assert s0["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in s0
    assert s1["exp_avg"].dtype == np.uint8 and s1["exp_avg_absmax"].shape == (16,)
    assert s2["exp_avg_sq"].shape == (3, 2000) and s2["exp_avg_sq_absmax"].shape == (24,)
    # a constant gradient: every block's values are equal, so they are exact (code 1.0)
    m = dequantize(s1["exp_avg"], s1["exp_avg_absmax"], True)
    np.testing.assert_allclose(m, 0.05, rtol=1e-6)
    assert set(np.unique(s1["exp_avg"])) == {255}
    np.testing.assert_array_equal(ps[0], ps[1][:4095])     # float32 and 8-bit state: the same first step


def test_state_memory_is_about_a_quarter():
    p = np.zeros(1 << 20, np.float32)
    opt = fusedoptim.Adam([p], state_dtype="int8")
    opt.step([np.ones_like(p)])
    nbytes = sum(v.nbytes for v in opt.state[p].values() if isinstance(v, np.ndarray))
    assert nbytes / (2 * p.nbytes) <= 0.27


def test_bfloat16_params_with_int8_state():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf = np.dtype(ml_dtypes.bfloat16)
    p32 = make_params(2, [(5000,)], np.float32)[0]
    p = p32.astype(bf)
    opt = fusedoptim.Adam([p], lr=1e-2, state_dtype="int8")
    gs = list(grad_stream(3, [(5000,)], np.float32, 4))
    for (g,) in gs:
        opt.step([g])
    q = p32.copy()
    ref = fusedoptim.Adam([q], lr=1e-2, state_dtype="int8")
    for (g,) in gs:
        ref.step([g])
    assert opt.state[p]["exp_avg"].dtype == np.uint8
    # bfloat16 keeps 8 bits: four nearest-rounded writes drift by up to two ulps
    np.testing.assert_allclose(p.astype(np.float32), q, rtol=2 ** -5, atol=1e-3)


def test_sgd_without_momentum_keeps_no_state():
    p = np.ones(5000, np.float32)
    opt = fusedoptim.SGD([p], lr=0.1, state_dtype="int8")
    opt.step([np.ones_like(p)])
    np.testing.assert_allclose(p, 0.9)
    assert set(opt.state[p]) == {"step"} or all(not isinstance(v, np.ndarray) for v in opt.state[p].values())


# ------------------------------------------------------------------ conversions and bad input
def test_loading_another_state_dtype_fails_or_converts_on_request():
    p = make_params(1, [(5000,)], np.float32)
    g = [np.ones(5000, np.float32)]
    o32 = fusedoptim.Adam(p)
    o32.step(g)
    sd32 = o32.state_dict()
    q = [x.copy() for x in p]
    o8 = fusedoptim.Adam(q, state_dtype="int8")
    with pytest.raises(ValueError, match="convert_state_dtype=True"):
        o8.load_state_dict(sd32)
    assert len(o8.state) == 0
    o8.load_state_dict(sd32, convert_state_dtype=True)
    st = o8.state[q[0]]
    wc, wa = quantize(sd32["state"][0]["exp_avg"], True, 256)
    np.testing.assert_array_equal(st["exp_avg"], wc)
    np.testing.assert_array_equal(st["exp_avg_absmax"], wa)
    o8.step(g)
    sd8 = o8.state_dict()
    assert sd8["storage"] == {"state_dtype": "int8", "block_size": 256, "min_8bit_size": 4096}
    # 8-bit into float32
    r = [x.copy() for x in p]
    o2 = fusedoptim.Adam(r)
    with pytest.raises(ValueError, match="int8"):
        o2.load_state_dict(sd8)
    o2.load_state_dict(sd8, convert_state_dtype=True)
    np.testing.assert_array_equal(o2.state[r[0]]["exp_avg"],
                                  dequantize(sd8["state"][0]["exp_avg"], sd8["state"][0]["exp_avg_absmax"], True))
    # another block size
    o3 = fusedoptim.Adam([x.copy() for x in p], state_dtype="int8", block_size=128)
    with pytest.raises(ValueError, match="block"):
        o3.load_state_dict(sd8)
    o3.load_state_dict(sd8, convert_state_dtype=True)
    # into bfloat16
    pytest.importorskip("ml_dtypes")
    o4 = fusedoptim.Adam([x.copy() for x in p], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="convert_state_dtype=True"):
        o4.load_state_dict(sd8)
    o4.load_state_dict(sd8, convert_state_dtype=True)


@pytest.mark.parametrize("edit,msg", [
    (lambda st: st.update(exp_avg=st["exp_avg"][:-1]), "shape"),
    (lambda st: st.update(exp_avg_absmax=st["exp_avg_absmax"][:-1]), "absmax"),
    (lambda st: st.update(exp_avg=st["exp_avg"].astype(np.int16)), "uint8"),
    (lambda st: st.pop("exp_avg_absmax"), "absmax"),
    (lambda st: st.update(exp_avg_absmax=st["exp_avg_absmax"].astype(np.float64)), "float32"),
])
def test_bad_8bit_state_dict_fails_before_anything(edit, msg):
    p = make_params(1, [(5000,)], np.float32)
    o = fusedoptim.Adam(p, state_dtype="int8")
    o.step([np.ones(5000, np.float32)])
    sd = o.state_dict()
    edit(sd["state"][0])
    q = [x.copy() for x in p]
    o2 = fusedoptim.Adam(q, state_dtype="int8")
    o2.step([np.ones(5000, np.float32)])
    before = {k: v.copy() for k, v in o2.state[q[0]].items() if isinstance(v, np.ndarray)}
    with pytest.raises((ValueError, TypeError), match=msg):
        o2.load_state_dict(sd)
    for k, v in before.items():
        np.testing.assert_array_equal(o2.state[q[0]][k], v)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(state_dtype="int8", block_size=100), ValueError, "block_size must be a power of two"),
    (dict(state_dtype="int8", block_size=32), ValueError, "block_size must be a power of two"),
    (dict(state_dtype="int8", block_size=8192), ValueError, "block_size must be a power of two"),
    (dict(state_dtype="int8", block_size=256.0), TypeError, "block_size must be an integer"),
    (dict(state_dtype="int8", min_8bit_size=-1), ValueError, "min_8bit_size must be >= 0"),
    (dict(state_dtype="int4"), ValueError, "state_dtype must be one of"),
])
def test_bad_options_raise_before_anything(kw, exc, msg):
    p = np.ones(5, np.float32)
    with pytest.raises(exc, match=msg):
        fusedoptim.Adam([p], **kw)


def test_float64_params_refuse_int8():
    # (the reducing optimizers, Muon: tests/test_int8_families.py)
    with pytest.raises(TypeError, match="state_dtype='int8' needs float32"):
        fusedoptim.Adam([np.ones(5, np.float64)], state_dtype="int8")


def test_int8_needs_no_ml_dtypes(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    p = np.ones(5000, np.float32)
    opt = fusedoptim.Adam([p], state_dtype="int8")
    opt.step([np.ones_like(p)])
    assert opt.state[p]["exp_avg"].dtype == np.uint8


def test_every_buffer_has_a_sign():
    # a buffer that can be negative must use the signed map
    for name in ("SGD", "Adam", "RMSprop", "Adamax", "Lion", "Adan", "Rprop"):
        opt = getattr(fusedoptim, name)([np.ones(3, np.float32)], lr=1e-3)
        s = set(signed_buffers(opt))
        for b in ("exp_avg", "momentum_buffer", "grad_avg", "exp_avg_diff", "previous_grad", "prev"):
            if b in opt.spec.buffers:
                assert b in s, (name, b)
        for b in ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "exp_inf", "sum", "step_size"):
            if b in opt.spec.buffers:
                assert b not in s, (name, b)


def test_readme_int8_snippet_runs(capsys):
    import os
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    section = text.split("### 8-bit block-wise state", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "README int8 snippet", "exec"), {})
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "uint8 (256, 64) (64,)" and out[1] == "float32" and out[2] == "True"


def test_zero_shard_checkpoint_with_int8_state_resumes_bit_exact(tmp_path):
    """ZeroOptimizer on one rank (COMM_SELF): 8-bit shard state saved, loaded into a fresh
    ZeroOptimizer, and continued == the straight run; consolidation (from the files, and
    the gather) gives the whole-range state."""
    MPI = pytest.importorskip("mpi4py.MPI")
    from fusedoptim.arena import ParamArena
    from fusedoptim.distributed import ZeroOptimizer, consolidate_checkpoint

    def arena():
        rng = np.random.default_rng(3)
        return ParamArena({"W": rng.standard_normal((64, 100)).astype(np.float32),
                           "b": rng.standard_normal(100).astype(np.float32)})

    grads = [np.random.default_rng(t).standard_normal(8192).astype(np.float32) for t in range(8)]

    def steps(z, a, ts):
        g = a.grad_arena()
        for t in ts:
            g.flat[...] = grads[t][:g.flat.size]
            z.step(g)

    a1 = arena()
    z1 = ZeroOptimizer(fusedoptim.Adam, a1, MPI.COMM_SELF, lr=1e-2, state_dtype="int8", block_size=128)
    steps(z1, a1, range(8))
    a2 = arena()
    z2 = ZeroOptimizer(fusedoptim.Adam, a2, MPI.COMM_SELF, lr=1e-2, state_dtype="int8", block_size=128)
    steps(z2, a2, range(5))
    z2.save_checkpoint(str(tmp_path / "ck"))
    a3 = arena()
    z3 = ZeroOptimizer(fusedoptim.Adam, a3, MPI.COMM_SELF, lr=1e-2, state_dtype="int8", block_size=128)
    z3.load_checkpoint(str(tmp_path / "ck"))
    st = z3.optimizer.state[z3.optimizer.params[0]]
    assert st["exp_avg"].dtype == np.uint8 and st["exp_avg_absmax"].dtype == np.float32
    steps(z3, a3, range(5, 8))
    np.testing.assert_array_equal(a1.flat, a3.flat)
    s1 = z1.optimizer.state[z1.optimizer.params[0]]
    for k in ("exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"):
        np.testing.assert_array_equal(s1[k], st[k], err_msg=k)
    sd, _ = consolidate_checkpoint(str(tmp_path / "ck"))      # one shard: it is the whole range
    assert sd["storage"]["state_dtype"] == "int8"
    full = z2.consolidated_state_dict()       # the MPI gather: the same arrays
    for k, v in sd["state"][0].items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(full["state"][0][k], v, err_msg=k)


def test_ema_and_clipping_with_int8_state():
    """The EMA epilogue and per-parameter clipping run in the 8-bit pass: the same
    parameters as an optimizer given the pre-clipped gradients, and the EMA of the
    parameters as they are written."""
    shapes = [(5000,), (300,)]
    gs = list(grad_stream(5, shapes, np.float32, 4))
    a = make_params(6, shapes, np.float32)
    oa = fusedoptim.Adam(a, lr=1e-2, state_dtype="int8", ema_decay=0.5)
    b = make_params(6, shapes, np.float32)
    ob = fusedoptim.Adam(b, lr=1e-2, state_dtype="int8")
    ema = None
    for g in gs:
        oa.step(g)
        ob.step(g)
        ema = [p.copy() for p in b] if ema is None else [e + np.float32(0.5) * (p - e) for e, p in zip(ema, b)]
    for x, y, e in zip(a, b, ema):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(oa.state[x]["ema"], e, rtol=1e-6, atol=1e-7)
    c = make_params(6, shapes, np.float32)
    oc = fusedoptim.Adam(c, lr=1e-2, state_dtype="int8", clipnorm=1.0)
    for g in gs:
        oc.step(g)
    assert all(np.all(np.isfinite(p)) for p in c)
    assert not np.array_equal(c[0], b[0])          # clipping changed the run
