"""Low-precision state beyond the element-wise list (issues 12 item 3 and 13 item 3):
8-bit state for the reducing optimizers (Lamb, LARS, NovoGrad), bfloat16 and 8-bit
``momentum_buffer`` for Muon, Adafactor's refusal, and ZeRO-1 resharding of 8-bit state.

References (independent of the kernels):

- Lamb, LARS, NovoGrad: float64 formulas (the docstrings'), with the 8-bit storage
  emulated by test_int8's NumPy quantizer (written from the definition): a buffer is
  quantized from its float32 value after the step that updated it and read back.  LAMB's
  norms are those of the update the apply pass makes from the new, not yet encoded, m and
  v (reduce_q8.h); LARS and NovoGrad store their buffer after the update used it, as every
  element-wise rule; NovoGrad's per-tensor ``grads_ema`` stays float32.
- Muon: its float32-state run with ``momentum_buffer`` passed through the same NumPy
  quantizer (or test_lowprec's bfloat16 rounding) after every step: the low-precision Muon
  decodes, runs the float32 stage and encodes, so the two agree bit for bit.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cases import grad_stream, make_params, seed_for
from test_int8 import _bits, dq_ref, q_ref
from test_lowprec import BF16, REDUCE_CASES, REDUCE_IDS, random_bits, round_bf16   # the same cases

import fusedoptim
from fusedoptim import _kernels

# a matrix (66 blocks of 64, a short last one), two float32-state tensors (below
# min_8bit_size), and a vector of two stats blocks (16384 elements each)
SHAPES = [(70, 60), (7,), (3, 5), (20000,)]
BLOCK, MIN_SIZE = 64, 100
BUFFERS = {"Lamb": ("exp_avg", "exp_avg_sq"), "LARS": ("momentum_buffer",), "NovoGrad": ("moments",)}
SIGNED = {"exp_avg", "momentum_buffer", "moments"}


def _reduce_ref_q8(name, kw, params, grads_seq, *, seed, stochastic):
    """float64 reference with 8-bit storage (module docstring); returns the parameters, the
    per-tensor state values and the codes ``{buffer: (codes, absmax)}`` of the last step."""
    ps = [p.astype(np.float64) for p in params]
    lr, wd = kw["lr"], kw.get("weight_decay", 0.0)
    sign = -1.0 if kw.get("maximize", False) else 1.0
    st = [dict() for _ in ps]
    codes = [dict() for _ in ps]

    def store(x, t, i, slot, buf):
        if x.size < MIN_SIZE:
            return x.astype(np.float32).astype(np.float64)
        bits = _bits(seed, t, i, x.size, slot) if stochastic else None
        c, a = q_ref(x.astype(np.float32), buf in SIGNED, BLOCK, bits)
        codes[i][buf] = (c, a)
        return dq_ref(c, a, buf in SIGNED, BLOCK).astype(np.float64).reshape(x.shape)

    for t, grads in enumerate(grads_seq, start=1):
        for i, (p, g) in enumerate(zip(ps, grads)):
            g = sign * g.astype(np.float64)
            s = st[i]
            if name == "Lamb":
                b1, b2 = kw.get("betas", (0.9, 0.999))
                eps = kw.get("eps", 1e-6)
                decouple = kw.get("weight_decouple", True)
                m = b1 * s.get("m", 0.0) + (1 - b1) * g
                v = b2 * s.get("v", 0.0) + (1 - b2) * g * g
                pd = p * (1 - lr * wd) if decouple and wd else p
                u = m / (np.sqrt(v) + eps) + (0.0 if decouple else wd * pd)
                wn, un = min(np.linalg.norm(pd), 10.0), np.linalg.norm(u)
                r = 1.0 if wn == 0 or un == 0 else wn / (un + eps)
                p[...] = pd - lr / (1 - b1 ** t) * r * u
                s["m"], s["v"] = store(m, t, i, 0, "exp_avg"), store(v, t, i, 1, "exp_avg_sq")
            elif name == "LARS":
                mom, damp = kw.get("momentum", 0.9), kw.get("dampening", 0.0)
                if p.ndim > 1:
                    pn, gn = np.linalg.norm(p), np.linalg.norm(g)
                    den = gn + wd * pn
                    r = kw.get("trust_coefficient", 1e-3) * pn / den if pn > 0 and den > 0 else 1.0
                    g = (g + wd * p) * r
                if mom > 0:
                    b = mom * s.get("b", 0.0) + (1 - damp) * g
                    g = g + mom * b if kw.get("nesterov", False) else b
                    s["b"] = store(b, t, i, 0, "momentum_buffer")
                p[...] = p - lr * g
            else:
                b1, b2 = kw.get("betas", (0.95, 0.98))
                eps = kw.get("eps", 1e-8)
                decouple = kw.get("weight_decouple", False)
                sq = float(np.sum(g * g))
                s["ema"] = ema = sq if t == 1 else s["ema"] + (1 - b2) * (sq - s["ema"])
                g = g / (np.sqrt(ema) + eps)
                if decouple:
                    p[...] = p * (1 - lr * wd)
                elif wd:
                    g = g + wd * p
                m = g if t == 1 else b1 * s["m"] + (1 - b1 if kw.get("grad_averaging", False) else 1.0) * g
                p[...] = p - lr * m
                s["m"] = store(m, t, i, 0, "moments")
    return ps, st, codes


def _build(name, ps, kw, **extra):
    return getattr(fusedoptim, name)(ps, **kw, state_dtype="int8", block_size=BLOCK, min_8bit_size=MIN_SIZE,
                                     **extra)


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("name,kw", REDUCE_CASES, ids=REDUCE_IDS)
def test_reducing_optimizers_int8_state_track_the_quantized_reference(name, kw, stochastic):
    params = make_params(seed_for("p", name), SHAPES, np.float32)
    grads = list(grad_stream(seed_for("g", name), SHAPES, np.float32, 10))
    mine = [p.copy() for p in params]
    opt = _build(name, mine, kw, seed=21, rounding="stochastic" if stochastic else "nearest")
    for gs in grads:
        opt.step(gs)
    ref_p, ref_s, ref_c = _reduce_ref_q8(name, kw, params, grads, seed=21, stochastic=stochastic)
    equal = total = 0
    for i, p in enumerate(mine):
        st = opt.state[p]
        kept = [b for b in BUFFERS[name] if b in st]
        assert len(kept) == (0 if kw.get("momentum", 1.0) == 0.0 else len(BUFFERS[name]))
        for b in kept:
            if p.size < MIN_SIZE:
                assert st[b].dtype == np.float32 and b + "_absmax" not in st
                continue
            wc, wa = ref_c[i][b]
            c, a = st[b].reshape(-1), st[b + "_absmax"]
            assert c.dtype == np.uint8 and c.shape == (p.size,) and a.shape == (-(-p.size // BLOCK),)
            np.testing.assert_allclose(a, wa, rtol=1e-4, atol=1e-30, err_msg=f"{name} {b} absmax")
            diff = np.abs(c.astype(int) - wc.astype(int))
            assert diff.max() <= (2 if stochastic else 1), f"{name} {b}: a code differs by {diff.max()}"
            equal += int(np.sum(diff == 0))
            total += c.size
        if name == "NovoGrad":       # the per-tensor state stays float32
            assert st["grads_ema"].dtype == np.float32 and st["grads_ema"].shape == ()
            np.testing.assert_allclose(float(st["grads_ema"]), ref_s[i]["ema"], rtol=1e-4)
        close = np.isclose(p, ref_p[i], rtol=1e-3, atol=1e-3 * kw["lr"])
        assert close.mean() >= 0.995, f"{name} params[{i}]: {np.sum(~close)} of {close.size} differ"
    assert equal >= 0.99 * total, f"{name}: only {equal}/{total} codes equal the reference's"


def _arrays(opt, ps):
    return [{k: v.copy() for k, v in opt.state[p].items() if isinstance(v, np.ndarray)} for p in ps]


def _same(run_a, run_b):
    for x, y in zip(run_a[0], run_b[0]):
        np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32))
    for sa, sb in zip(run_a[1], run_b[1]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype
            np.testing.assert_array_equal(sa[k].reshape(-1).view(np.uint8), sb[k].reshape(-1).view(np.uint8), err_msg=k)


@pytest.mark.parametrize("name,kw", REDUCE_CASES, ids=REDUCE_IDS)
def test_reducing_optimizers_int8_bits_identical_for_threads_and_batches(name, kw):
    """Stochastic codes, bfloat16-exact parameters: 1 thread, 2 threads with small chunks,
    batches of one tensor, one batch: the same bits."""
    shapes = [(2 ** 20 + 3,), (7,), (300, 70), (4099,)]
    runs = []
    for threads, grain, batch in ((1, 1 << 16, 8 << 20), (2, 1, 8 << 20), (2, 1000, 1), (2, 1, 1 << 40)):
        fusedoptim.set_num_threads(threads)
        _kernels.set_grain_size(grain)
        _kernels.set_reduce_batch(batch)
        try:
            ps = make_params(1, shapes, np.float32)
            opt = getattr(fusedoptim, name)(ps, **kw, state_dtype="int8", rounding="stochastic", seed=4)
            for gs in grad_stream(2, shapes, np.float32, 3):
                opt.step(gs)
        finally:
            _kernels.set_reduce_batch(8 << 20)
            _kernels.set_grain_size(1 << 16)
            fusedoptim.set_num_threads(2)
        runs.append(([p.copy() for p in ps], _arrays(opt, ps)))
    if kw.get("momentum", 1.0) != 0.0:
        assert runs[0][1][0][BUFFERS[name][0]].dtype == np.uint8
    for other in runs[1:]:
        _same(runs[0], other)


@pytest.mark.parametrize("name,kw", REDUCE_CASES[::2], ids=REDUCE_IDS[::2])
def test_reducing_optimizers_int8_resume_is_bit_exact(name, kw, tmp_path):
    """fo.save / fo.load and state_dict / load_state_dict: the resumed run continues with
    the straight run's bits (stochastic codes: the hash of step and element index)."""
    grads = list(grad_stream(3, SHAPES, np.float32, 8))
    a = make_params(4, SHAPES, np.float32)
    oa = _build(name, a, kw, seed=5, rounding="stochastic")
    for gs in grads:
        oa.step(gs)
    b = make_params(4, SHAPES, np.float32)
    ob = _build(name, b, kw, seed=5, rounding="stochastic")
    for gs in grads[:4]:
        ob.step(gs)
    fusedoptim.save(tmp_path / "c.npz", ob, params=b)
    sd = ob.state_dict()
    assert sd["storage"] == {"state_dtype": "int8", "block_size": BLOCK, "min_8bit_size": MIN_SIZE}
    c = make_params(0, SHAPES, np.float32)
    oc = _build(name, c, kw, seed=5, rounding="stochastic")
    fusedoptim.load(tmp_path / "c.npz", oc, params=c)
    d = [p.copy() for p in b]
    od = _build(name, d, kw, seed=5, rounding="stochastic")
    od.load_state_dict(sd)
    for gs in grads[4:]:
        oc.step(gs)
        od.step(gs)
    _same(([x.copy() for x in a], _arrays(oa, a)), (c, _arrays(oc, c)))
    _same(([x.copy() for x in a], _arrays(oa, a)), (d, _arrays(od, d)))


@pytest.mark.parametrize("name", ["Lamb", "LARS", "NovoGrad"])
def test_reducing_optimizers_int8_ema_is_the_average_of_the_written_parameters(name):
    """The EMA epilogue runs in the 8-bit apply pass: the float64 average of the parameters
    as written after each step (the first average: the parameters after the first step)."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal((80, 70)).astype(np.float32)
    opt = getattr(fusedoptim, name)([p], lr=1e-2, state_dtype="int8", ema_decay=0.9, rounding="stochastic")
    ema = None
    for _ in range(5):
        opt.step([rng.standard_normal(p.shape).astype(np.float32)])
        ema = p.astype(np.float64) if ema is None else ema + 0.1 * (p - ema)
    assert opt.state[p][BUFFERS[name][0]].dtype == np.uint8
    np.testing.assert_allclose(opt.state[p]["ema"], ema, rtol=0, atol=2e-6)


def test_novograd_int8_with_bfloat16_params_and_state_conversion():
    """bfloat16 parameters with 8-bit state run (float32 per-tensor state); a float32-state
    state_dict loads into an int8 NovoGrad only with convert_state_dtype=True."""
    p = make_params(7, [(50, 90)], np.float32)[0].astype(BF16)
    opt = fusedoptim.NovoGrad([p], lr=1e-2, state_dtype="int8")
    before = p.copy()
    for gs in grad_stream(8, [(50, 90)], np.float32, 3):
        opt.step([g.astype(BF16) for g in gs])
    st = opt.state[p]
    assert p.dtype == BF16 and np.any(p != before) and np.all(np.isfinite(p.astype(np.float32)))
    assert st["moments"].dtype == np.uint8 and st["grads_ema"].dtype == np.float32
    q = np.ones((50, 90), np.float32)
    f32 = fusedoptim.NovoGrad([q], lr=1e-2)
    f32.step([np.full_like(q, 0.5)])
    i8 = fusedoptim.NovoGrad([q.copy()], lr=1e-2, state_dtype="int8")
    with pytest.raises(ValueError, match="convert_state_dtype=True"):
        i8.load_state_dict(f32.state_dict())
    assert i8.state_dict()["state"] == {}
    i8.load_state_dict(f32.state_dict(), convert_state_dtype=True)
    s8 = i8.state[i8.params[0]]
    assert s8["moments"].dtype == np.uint8 and s8["grads_ema"].dtype == np.float32
    assert float(s8["grads_ema"]) == float(f32.state[q]["grads_ema"])


# ------------------------------------------------------------------ Muon
def _muon_emulated(params, grads, kw, *, kind, seed, stochastic):
    """float32-state Muon whose momentum_buffer is passed through the NumPy storage
    (8-bit: q_ref/dq_ref; bfloat16: round_bf16) after every step."""
    opt = fusedoptim.Muon(params, **kw)
    for t, gs in enumerate(grads, start=1):
        opt.step(gs)
        for i, p in enumerate(params):
            b = opt.state[p]["momentum_buffer"]
            if kind == "bfloat16":
                bits = random_bits(seed, t, i, b.size, 0).reshape(b.shape) if stochastic else None
                b[...] = round_bf16(b, bits).astype(np.float32)
            elif b.size >= MIN_SIZE:
                c, a = q_ref(b, True, BLOCK, _bits(seed, t, i, b.size, 0) if stochastic else None)
                b[...] = dq_ref(c, a, True, BLOCK).reshape(b.shape)
    return opt


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_muon_low_precision_momentum_equals_the_emulated_storage(kind, stochastic):
    shapes = [(40, 30), (5, 3), (64, 80)]        # int8: the (5, 3) matrix keeps float32 state
    kw = dict(lr=2e-2, weight_decay=0.1)
    grads = list(grad_stream(seed_for("g", "Muon"), shapes, np.float32, 6))
    ref = make_params(seed_for("p", "Muon"), shapes, np.float32)
    mine = [p.copy() for p in ref]
    opt = fusedoptim.Muon(mine, **kw, state_dtype=kind, seed=13, block_size=BLOCK, min_8bit_size=MIN_SIZE,
                          rounding="stochastic" if stochastic else "nearest")
    for gs in grads:
        opt.step(gs)
    emu = _muon_emulated(ref, grads, kw, kind=kind, seed=13, stochastic=stochastic)
    for i, (p, r) in enumerate(zip(mine, ref)):
        np.testing.assert_array_equal(p, r, err_msg=f"params[{i}]")
        st, want = opt.state[p], emu.state[r]["momentum_buffer"]
        if kind == "bfloat16":
            assert st["momentum_buffer"].dtype == BF16
            got = st["momentum_buffer"].astype(np.float32)
        elif p.size >= MIN_SIZE:
            assert st["momentum_buffer"].dtype == np.uint8
            got = _kernels.q8_dequantize(st["momentum_buffer"], st["momentum_buffer_absmax"], True, BLOCK)
        else:
            assert st["momentum_buffer"].dtype == np.float32 and "momentum_buffer_absmax" not in st
            got = st["momentum_buffer"]
        np.testing.assert_array_equal(got, want, err_msg=f"momentum_buffer[{i}]")


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_muon_low_precision_resume_and_threads_are_bit_exact(kind, tmp_path):
    shapes = [(300, 200), (64, 80)]
    grads = list(grad_stream(5, shapes, np.float32, 6))
    runs = []
    for threads in (1, 2):
        fusedoptim.set_num_threads(threads)
        try:
            ps = make_params(6, shapes, np.float32)
            opt = fusedoptim.Muon(ps, lr=2e-2, state_dtype=kind, rounding="stochastic", seed=3)
            for gs in grads:
                opt.step(gs)
        finally:
            fusedoptim.set_num_threads(2)
        runs.append(([p.copy() for p in ps], _arrays(opt, ps)))
    _same(runs[0], runs[1])
    b = make_params(6, shapes, np.float32)
    ob = fusedoptim.Muon(b, lr=2e-2, state_dtype=kind, rounding="stochastic", seed=3)
    for gs in grads[:3]:
        ob.step(gs)
    fusedoptim.save(tmp_path / "m.npz", ob, params=b)
    c = make_params(0, shapes, np.float32)
    oc = fusedoptim.Muon(c, lr=2e-2, state_dtype=kind, rounding="stochastic", seed=3)
    fusedoptim.load(tmp_path / "m.npz", oc, params=c)
    for gs in grads[3:]:
        oc.step(gs)
    _same(runs[0], (c, _arrays(oc, c)))
    with pytest.raises(ValueError, match="convert_state_dtype=True"):
        fusedoptim.Muon([np.ones((300, 200), np.float32), np.ones((64, 80), np.float32)],
                        lr=2e-2).load_state_dict(oc.state_dict())


# ------------------------------------------------------------------ Adafactor: refused, with the reason
@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_adafactor_refuses_low_precision_state_with_the_reason(kind):
    p = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="not supported by Adafactor: its state is already sublinear.*"
                                         "state_dtype='float32'"):
        fusedoptim.Adafactor([p], state_dtype=kind)
    assert np.all(p == 1)


# ------------------------------------------------------------------ ZeRO-1: whole blocks per shard
def test_zero_shards_are_cut_at_8bit_block_boundaries():
    from fusedoptim.distributed.zero import _shard_align, shard_bounds
    assert _shard_align(4, {}) == 16 and _shard_align(8, {"state_dtype": "bfloat16"}) == 8
    assert _shard_align(4, {"state_dtype": "int8"}) == 256
    assert _shard_align(4, {"state_dtype": "int8", "block_size": 64}) == 64
    for lo, hi in shard_bounds(100_003, 3, _shard_align(4, {"state_dtype": "int8", "block_size": 1024})):
        assert lo % 1024 == 0 and (hi % 1024 == 0 or hi == 100_003)


def test_zero_int8_checkpoint_reshards_from_two_ranks_to_one(tmp_path):
    """2 ranks save 8-bit shard state (mpi_scripts/zero_int8.py); one rank (COMM_SELF)
    loads it, consolidate_checkpoint reassembles it (the same arrays as the ranks'
    consolidated_state_dict) for a plain Adam over the flat vector, and a one-process run
    that never sharded: all continue with the 2-rank run's bits (nearest rounding, whole
    blocks)."""
    from test_distributed import HAVE_MPI4PY, MPIEXEC, run_mpi
    if not (HAVE_MPI4PY and MPIEXEC):
        pytest.skip("mpi4py or mpiexec missing (pip install mpi4py mpich gives both)")
    from mpi4py import MPI

    from fusedoptim.arena import ParamArena
    from fusedoptim.distributed import ZeroOptimizer, consolidate_checkpoint

    run_mpi(2, "zero_int8.py", tmp_path)
    with open(tmp_path / "result.json") as f:
        res = json.load(f)
    # 6512 elements (the arena pads b): half is 3256, rounded up to 64 bytes 3264 (not a
    # multiple of 128), to whole blocks 3328
    assert res["world"] == 2 and res["bounds"] == [[0, 3328], [3328, 6512]]
    after = np.load(tmp_path / "after.npy")
    kw = dict(lr=1e-2, state_dtype="int8", block_size=128, min_8bit_size=64)

    def arena():
        rng = np.random.default_rng(3)
        return ParamArena({"W": rng.standard_normal((64, 100)).astype(np.float32),
                           "b": rng.standard_normal(100).astype(np.float32)})

    def grad(t, n):
        return np.random.default_rng(100 + t).standard_normal(n).astype(np.float32)

    a = arena()
    z = ZeroOptimizer(fusedoptim.Adam, a, MPI.COMM_SELF, **kw)
    z.load_checkpoint(str(tmp_path / "ckpt"))
    g = a.grad_arena()
    for t in range(5, 8):
        g.flat[...] = grad(t, g.flat.size)
        z.step(g)
    np.testing.assert_array_equal(a.flat, after)

    sd, flat = consolidate_checkpoint(str(tmp_path / "ckpt"))
    assert sd["state"][0]["exp_avg_absmax"].shape == (-(-flat.size // 128),)
    with np.load(tmp_path / "consolidated.npz") as gathered:      # the MPI gather: the same arrays
        assert sorted(gathered.files) == ["exp_avg", "exp_avg_absmax", "exp_avg_sq", "exp_avg_sq_absmax"]
        for k in gathered.files:
            np.testing.assert_array_equal(gathered[k], sd["state"][0][k], err_msg=k)
    opt = fusedoptim.Adam([flat], **kw)
    opt.load_state_dict(sd)
    for t in range(5, 8):
        opt.step([grad(t, flat.size)])
    np.testing.assert_array_equal(flat, after)

    straight = arena().flat
    one = fusedoptim.Adam([straight], **kw)
    for t in range(8):
        one.step([grad(t, straight.size)])
    np.testing.assert_array_equal(straight, after)


def test_readme_low_precision_families_snippet_runs(capsys):
    import os
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    section = text.split("Which optimizer takes which `state_dtype`", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    code = "\n".join(line[2:] for line in code.split("\n"))          # the list item's indent
    exec(compile(code, "README low-precision families snippet", "exec"), {})
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "uint8 (32,)" and out[1] == "bfloat16"
