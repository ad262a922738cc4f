"""Issue 11's guarantees, proved: a forked child steps (os.fork, multiprocessing, Pool);
non-native byte order and unaligned arrays are refused everywhere an array enters, and a
checkpoint written in the other byte order is converted on read; one optimizer is safe
from many threads (steps, background saves); construction and apply_gradients stay
correct at 50k parameters; loss scaling with gradient accumulation unscales each
micro-batch by its own scale.

The fork tests run their script in a fresh interpreter under a hard timeout, in its own
session, so a hang (libgomp's fork problem) fails the test instead of hanging CI.
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels
from fusedoptim.archive import CheckpointError, read_archive, write_archive

TIMEOUT = 60        # seconds a fork scenario may take; a step of 4M elements takes milliseconds
BIG = 4_000_000     # above the 64K grain: the step and the norm run an OpenMP parallel region
OTHER = ">" if sys.byteorder == "little" else "<"


def foreign(a: np.ndarray) -> np.ndarray:
    """``a``'s values in the byte order this machine does not use."""
    return a.astype(a.dtype.newbyteorder(OTHER))


def unaligned(n: int, dtype) -> np.ndarray:
    """A C-contiguous, writeable array of ``n`` elements at an odd address."""
    dtype = np.dtype(dtype)
    a = np.frombuffer(memoryview(bytearray(n * dtype.itemsize + 1))[1:], dtype)
    assert not a.flags.aligned and a.flags.c_contiguous and a.flags.writeable
    return a


# ====================================================================== fork
_FORK_PRELUDE = """
import os, sys, multiprocessing as mp
import numpy as np
import fusedoptim as fo

def work(tag):
    # a step and a norm, each one parallel region above the grain
    p = np.ones({big}, np.float32)
    fo.Adam([p], lr=0.5).step([np.ones_like(p)])
    norm = fo.clip_grad_norm([np.full_like(p, 2.0)], 1.0)
    assert abs(norm - 2.0 * {big} ** 0.5) < 1e-6 * norm, norm
    assert np.all(p == 0.5), p[:3]
    return fo.get_num_threads()

fo.set_num_threads(2)
assert work("parent") == 2          # the parent has run a 2-thread parallel region
"""

_FORK_SCENARIOS = {
    "os.fork": """
pid = os.fork()
if pid == 0:
    code = 0 if work("child") == 1 else 3
    for n in (2, 0):                 # more threads would hang here: refused, not hung
        try:
            fo.set_num_threads(n)
            code = 4
        except RuntimeError as e:
            code = code if "spawn" in str(e) else 5
    fo.set_num_threads(1)
    code = code if work("child") == 1 else 6
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
""",
    "multiprocessing-fork": """
def child():
    sys.exit(0 if work("child") == 1 else 3)
proc = mp.get_context("fork").Process(target=child)
proc.start()
proc.join()
assert proc.exitcode == 0, proc.exitcode
""",
    "pool-fork": """
with mp.get_context("fork").Pool(2) as pool:
    assert pool.map(work, range(4)) == [1, 1, 1, 1]
""",
}

_FORK_EPILOGUE = """
assert work("parent again") == 2    # the parent's thread count is untouched
print("FORK-OK")
"""


def run_script(code: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; on timeout kill its whole session (a hung
    forked grandchild included) and fail."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s (killed)\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("how", list(_FORK_SCENARIOS))
def test_forked_child_steps_after_parent_ran_threads(how):
    """Issue 11 item 1: after the parent ran a 2-thread region, a child made by fork runs
    a 4M-element step and clip_grad_norm (on one thread) instead of hanging in
    GOMP_parallel, and refuses to raise its thread count (that would hang: checked by
    hand with libgomp); the parent keeps its 2 threads."""
    code = (_FORK_PRELUDE + _FORK_SCENARIOS[how] + _FORK_EPILOGUE).format(big=BIG)
    r = run_script(code)
    assert r.returncode == 0 and "FORK-OK" in r.stdout, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def test_forked_child_of_a_serial_parent_may_raise_its_thread_count():
    """The documented way back to threads in a child: set_num_threads works there when
    the parent never ran a parallel region (libgomp has no pool to lose)."""
    code = textwrap.dedent(f"""
        import os
        import numpy as np
        import fusedoptim as fo
        fo.set_num_threads(1)
        p = np.ones({BIG}, np.float32)
        fo.SGD([p], lr=1.0).step([np.ones_like(p)])
        pid = os.fork()
        if pid == 0:
            assert fo.get_num_threads() == 1
            fo.set_num_threads(2)
            fo.SGD([p], lr=1.0).step([np.ones_like(p)])
            fo.clip_grad_norm([np.ones_like(p)], 1.0)
            os._exit(0 if (p == -1.0).all() else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("FORK-OK")
    """)
    r = run_script(code)
    assert r.returncode == 0 and "FORK-OK" in r.stdout, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"


# ============================================================ byte order, alignment
BAD_LAYOUTS = {
    "byte order": (lambda n, dt: foreign(np.zeros(n, dt)), "byte order"),
    "unaligned": (lambda n, dt: unaligned(n, dt), "np.require(a, requirements='A')"),
}


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_params_with_bad_layout_are_refused(bad, dtype):
    make, msg = BAD_LAYOUTS[bad]
    p = make(7, dtype)
    with pytest.raises(ValueError, match="params\\[1\\] \\(group 0, index 1\\).*" + _re(msg)):
        fo.SGD([np.zeros(3, dtype), p], lr=1.0)
    opt = fo.SGD([np.zeros(3, dtype)], lr=1.0)
    with pytest.raises(ValueError, match=_re(msg)):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=_re(msg)):
        fo.SGD(lr=1.0, params=None).apply_gradients([(np.ones(7, dtype), p)])


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_grads_with_bad_layout_are_refused_and_nothing_changes(bad, dtype):
    """The issue's reproducer: a '>f4' gradient used to leave p = -4.6e-41, not -1."""
    make, msg = BAD_LAYOUTS[bad]
    p = np.zeros(4, dtype)
    opt = fo.Adam([p], lr=1.0)
    g = make(4, dtype)
    g[...] = 1.0
    with pytest.raises(ValueError, match="gradient of params\\[0\\].*" + _re(msg)):
        opt.step([g])
    assert np.all(p == 0) and len(opt.state) == 0 and opt.iterations == 0
    with pytest.raises(ValueError, match=_re(msg)):
        opt.apply_gradients([(g, p)])
    np.testing.assert_array_equal(p, 0)


def test_foreign_byte_order_gradient_converted_by_the_user_gives_the_right_step():
    p = np.zeros(4, np.float32)
    g = foreign(np.ones(4, np.float32))
    fo.SGD([p], lr=1.0).step([g.astype(g.dtype.newbyteorder("="))])
    np.testing.assert_array_equal(p, -1.0)


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_state_assignment_with_bad_layout_is_refused(bad, dtype):
    make, _ = BAD_LAYOUTS[bad]
    p = np.zeros(5, dtype)
    opt = fo.SGD([p], lr=1.0, momentum=0.9)
    opt.step([np.ones(5, dtype)])
    before = opt.state[p]["momentum_buffer"]
    with pytest.raises(ValueError, match="state\\['momentum_buffer'\\]"):
        opt.state[p]["momentum_buffer"] = make(5, dtype)
    assert opt.state[p]["momentum_buffer"] is before


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_native_call_refuses_state_and_ema_buffers_with_bad_layout(bad):
    """The native entry point checks every buffer it is handed (state, EMA), not only
    params and grads: fusedoptim's own paths can't produce such buffers, a direct caller can."""
    make, msg = BAD_LAYOUTS[bad]
    sgd = _kernels.ALGORITHMS["sgd"]
    common = dict(_kernels.ACCUMULATE_COMMON)
    scalars = dict(_kernels.ACCUMULATE_SCALARS, lr=1.0, momentum=0.9, first=1.0)
    p, g = np.zeros(6, np.float32), np.ones(6, np.float32)
    with pytest.raises(ValueError, match="state buffer of tensor 0: .*" + _re(msg)):
        _kernels.fused_step(sgd.id, common, scalars, 1, [p], [g], [[make(6, np.float32)]])
    with pytest.raises(ValueError, match="EMA buffer of tensor 0: .*" + _re(msg)):
        _kernels.fused_step(sgd.id, common, dict(scalars, momentum=0.0), 0, [p], [g], [], [make(6, np.float32)])
    np.testing.assert_array_equal(p, 0)


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_load_state_dict_copies_bad_layout_state_to_native_aligned_arrays(bad, dtype):
    """load_state_dict copies every array into the parameter's dtype (native order) and a
    fresh aligned buffer: a '>f4' or unaligned state array loads with its values, and the
    resumed run is bit-identical to one loaded from native arrays."""
    make, _ = BAD_LAYOUTS[bad]
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(9).astype(dtype)
    src = fo.Adam([p0.copy()], lr=0.1)
    for _ in range(3):
        src.step([rng.standard_normal(9).astype(dtype)])
    sd = src.state_dict()
    odd = {"state": {0: dict(sd["state"][0])}, **{k: v for k, v in sd.items() if k != "state"}}
    for k in ("exp_avg", "exp_avg_sq"):
        a = make(9, dtype)
        a[...] = sd["state"][0][k]
        odd["state"][0][k] = a
    pa, pb = p0.copy(), p0.copy()
    a, b = fo.Adam([pa], lr=0.1), fo.Adam([pb], lr=0.1)
    a.load_state_dict(sd)
    b.load_state_dict(odd)
    for k in ("exp_avg", "exp_avg_sq"):
        buf = b.state[pb][k]
        assert buf.dtype == np.dtype(dtype) and buf.dtype.isnative and buf.flags.aligned
        np.testing.assert_array_equal(buf, sd["state"][0][k])
    g = rng.standard_normal(9).astype(dtype)
    a.step([g])
    b.step([g])
    np.testing.assert_array_equal(pa, pb)


@pytest.mark.parametrize("bad", list(BAD_LAYOUTS))
def test_norm_and_clip_functions_refuse_bad_layouts(bad, dtype):
    make, msg = BAD_LAYOUTS[bad]
    g = make(5, dtype)
    g[...] = 3.0
    for call in (lambda: fo.global_norm([g]), lambda: fo.global_norm([g], norm_type=1.0),
                 lambda: fo.clip_grad_norm([np.ones(2, dtype), g], 1.0), lambda: fo.clip_by_global_norm([g], 1.0),
                 lambda: fo.clip_grad_value([g], 1.0)):
        with pytest.raises(ValueError, match=_re(msg)):
            call()
    np.testing.assert_array_equal(g, 3.0)
    from fusedoptim.pipeline import sum_of_squares
    with pytest.raises(ValueError, match=_re(msg)):
        sum_of_squares([g])


def _re(s: str) -> str:
    import re
    return re.escape(s)


# ------------------------------------------------------------ checkpoints
def _as_other_machine(src: str, dst: str) -> None:
    """Rewrite checkpoint ``src`` as a machine of the other byte order writes it: every
    multi-byte array and every dtype in the document in that order."""
    meta, arrays = read_archive(src, lambda m: True)
    meta = {k: v for k, v in meta.items() if k != "arrays"}
    if meta.get("optimizer"):
        for d in meta["optimizer"]["params"]:
            d["dtype"] = np.dtype(d["dtype"]).newbyteorder(OTHER).str
    swapped = {k: (foreign(a) if a.dtype.itemsize > 1 else a) for k, a in arrays.items()}
    write_archive(dst, meta, swapped)


def test_checkpoint_in_the_other_byte_order_is_converted_on_read(tmp_path, dtype):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    opt = fo.Adam([W, b], lr=0.05, amsgrad=True)
    for _ in range(3):
        opt.step([rng.standard_normal(W.shape).astype(dtype), rng.standard_normal(4).astype(dtype)])
    native, other = tmp_path / "native.npz", tmp_path / "other.npz"
    fo.save(native, opt, params={"W": W, "b": b}, extra={"rng": np.arange(5, dtype=np.int64)})
    _as_other_machine(str(native), str(other))
    with np.load(other) as z:          # the file really is in the other byte order
        assert z["params/0"].dtype.byteorder == OTHER

    def resume(path):
        W2, b2 = np.zeros_like(W), np.zeros_like(b)
        opt2 = fo.Adam([W2, b2], lr=0.05, amsgrad=True)
        out = fo.load(path, opt2, params={"W": W2, "b": b2})
        return W2, b2, opt2, out

    Wn, bn, on, outn = resume(native)
    Wo, bo, oo, outo = resume(other)
    np.testing.assert_array_equal(Wo, W)
    np.testing.assert_array_equal(bo, b)
    for p in (Wo, bo):
        for k, v in oo.state[p].items():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.dtype(dtype) and v.dtype.isnative
    for a in list(outo["params"].values()) + [outo["extra"]["rng"]]:
        assert a.dtype.isnative
    np.testing.assert_array_equal(outo["extra"]["rng"], np.arange(5))
    g = [rng.standard_normal(W.shape).astype(dtype), rng.standard_normal(4).astype(dtype)]
    on.step(g)
    oo.step(g)
    np.testing.assert_array_equal(Wo, Wn)
    np.testing.assert_array_equal(bo, bn)


def test_checkpoint_in_the_other_byte_order_still_refuses_a_wrong_dtype(tmp_path):
    """Byte order aside, the dtype must match: a float64 checkpoint is no float32 one."""
    p = np.zeros(3, np.float64)
    opt = fo.SGD([p], lr=1.0)
    opt.step([np.ones(3)])
    fo.save(tmp_path / "a.npz", opt, params=[p])
    _as_other_machine(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    q = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="dtype"):
        fo.load(tmp_path / "b.npz", fo.SGD([q], lr=1.0), params=[q])
    np.testing.assert_array_equal(q, 0)


# ================================================================= threads
def _adam_run(steps: int, threads: int, size: int):
    """``steps`` Adam steps on one optimizer with a fixed gradient, from ``threads``
    Python threads at once (steps // threads each)."""
    p = np.zeros(size, np.float32)
    opt = fo.Adam([p], lr=0.01)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    start = threading.Barrier(threads)

    def worker():
        start.wait()
        for _ in range(steps // threads):
            opt.step([g])

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return p, opt


def test_two_threads_stepping_one_optimizer_lose_no_update():
    """Issue 11 item 4: two threads x 100 steps used to lose updates (step 97-99 of 100).
    Adam with a fixed gradient makes the order irrelevant, so the result must be
    bit-identical to 200 steps from one thread.  The size is above the grain (the native
    call releases the GIL for a while) and the run is repeated to give a race its chances."""
    fo.set_num_threads(2)
    ref, ref_opt = _adam_run(200, 1, 70_000)
    for _ in range(5):
        p, opt = _adam_run(200, 2, 70_000)
        assert opt.iterations == 200 and opt.state[p]["step"] == 200
        np.testing.assert_array_equal(p, ref)
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"], ref_opt.state[ref]["exp_avg_sq"])


def test_background_saves_while_stepping_are_never_torn(tmp_path):
    """fo.save snapshots the optimizer state and the params under optimizer.lock: with
    SGD lr=1 and gradients of ones, every checkpoint must hold params == -step exactly,
    the same step in every parameter's state and in iterations."""
    params = [np.zeros(50_000, np.float32), np.zeros(300, np.float32)]
    opt = fo.SGD(params, lr=1.0)
    ones = [np.ones_like(p) for p in params]
    stop = threading.Event()
    paths, errors = [], []

    def saver():
        try:
            k = 0
            while not stop.is_set() and k < 40:
                path = tmp_path / f"c{k}.npz"
                fo.save(path, opt, params=params)
                paths.append(path)
                k += 1
        except BaseException as e:       # surfaced below
            errors.append(e)

    t = threading.Thread(target=saver)
    t.start()
    try:
        for _ in range(1_000_000):       # step until the saver is done (floats stay exact)
            opt.step(ones)
            if len(paths) >= 40 or errors:
                break
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert paths
    for path in paths:
        out = fo.load(path)
        it = out["iterations"]
        steps = {st["step"] for st in out["optimizer"]["state"].values()}
        assert steps <= {it}, (path, it, steps)
        for a in out["params"]:
            np.testing.assert_array_equal(a, -float(it), err_msg=str(path))
    # and every checkpoint restores into a fresh optimizer
    fresh = [np.empty_like(p) for p in params]
    fo.load(paths[-1], fo.SGD(fresh, lr=1.0), params=fresh)


def test_lock_is_public_and_reentrant():
    p = np.zeros(3)
    opt = fo.SGD([p], lr=1.0)
    with opt.lock:                       # a user may batch several calls atomically
        opt.step([np.ones(3)])
        sd = opt.state_dict()
        opt.load_state_dict(sd)
    assert opt.iterations == 1


# ========================================================== construction at scale
N = 50_000


def test_duplicate_among_many_params_is_found_with_its_label():
    ps = [np.zeros(3, np.float32) for _ in range(N)]
    ps.append(ps[12_345])
    with pytest.raises(ValueError, match=f"params\\[{N}\\] \\(group 0, index {N}\\): the same array appears"):
        fo.SGD(ps, lr=0.1)
    groups = [{"params": ps[:N // 2]}, {"params": ps[N // 2:N] + [ps[7]]}]
    with pytest.raises(ValueError, match=f"params\\[{N}\\] \\(group 1, index {N - N // 2}\\): the same array"):
        fo.SGD(groups, lr=0.1)
    opt = fo.SGD(ps[:N], lr=0.1)
    with pytest.raises(ValueError, match="params\\[50001\\] \\(group 1, index 1\\): the same array"):
        opt.add_param_group({"params": [np.zeros(2, np.float32), ps[N - 1]]})
    assert len(opt.param_groups) == 1 and len(opt.params) == N


def test_overlapping_views_among_many_params_are_found():
    base = np.zeros(3 * N + 1, np.float32)
    views = [base[3 * i:3 * i + 3] for i in range(N)]
    with pytest.raises(ValueError, match=f"params\\[{N}\\] \\(group 0, index {N}\\): shares memory"):
        fo.SGD(views + [base[3 * 777 + 2:3 * 777 + 4]], lr=0.1)
    fo.SGD(views + [base[3 * N:]], lr=0.1)     # adjacent, not overlapping: fine
    opt = fo.SGD(views, lr=0.1)
    with pytest.raises(ValueError, match="shares memory"):
        opt.add_param_group({"params": [base[10:11]]})


def test_apply_gradients_with_many_pairs():
    vs = [np.zeros(3, np.float32) for _ in range(N)]
    gs = [np.full(3, i, np.float32) for i in range(N)]
    opt = fo.SGD(lr=1.0, params=None)
    opt.apply_gradients(zip(gs, vs))
    opt.apply_gradients(reversed(list(zip(gs, vs))))      # the order of the pairs is free
    assert len(opt.params) == N and opt.iterations == 2
    assert all(v[0] == -2.0 * i for i, v in enumerate(vs))
    pairs = list(zip(gs, vs)) + [(gs[0], vs[4321])]
    with pytest.raises(ValueError, match=f"grads_and_vars\\[{N}\\]: variable appears twice"):
        opt.apply_gradients(pairs)
    assert opt.iterations == 2 and vs[4321][0] == -2.0 * 4321


# ================================================= loss scaling with accumulation
def test_dynamic_loss_scale_with_accumulation_issue_reproducer():
    p = [np.zeros(2)]
    opt = fo.SGD(p, lr=1.0, gradient_accumulation_steps=2)
    sc = fo.DynamicLossScale(initial_scale=1024.0, growth_interval=1)
    applied = [sc.step(opt, [np.ones(2) * sc.scale]) for _ in range(2)]
    np.testing.assert_array_equal(p[0], [-1.0, -1.0])
    assert applied == [False, True]
    assert sc.scale == 2048.0                # grown once: one good step, not two


def test_grad_scale_applies_to_each_accumulated_call():
    """step(g, grad_scale=s) scales that call's gradients, whichever call of the cycle it
    is: the applied gradient is (s1 g1 + s2 g2 + s3 g3) / 3."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(11)
    p = p0.copy()
    opt = fo.SGD([p], lr=0.5, momentum=0.9, gradient_accumulation_steps=3)
    gs = [rng.standard_normal(11) for _ in range(3)]
    ss = [0.5, 3.0, 0.125]
    for g, s in zip(gs, ss):
        opt.step([g], grad_scale=s)
    mean = (ss[0] * gs[0] + ss[1] * gs[1] + ss[2] * gs[2]) / 3
    np.testing.assert_allclose(p, p0 - 0.5 * mean, rtol=1e-14, atol=1e-15)


def test_dynamic_loss_scale_with_accumulation_matches_float64_formula():
    """A float64 Adam trained with DynamicLossScale and k = 3 micro-batches per step, the
    scale growing every good step and one micro-batch overflowing mid-cycle, against the
    formulas written out:

        cycle c, micro-batch j: the user's gradient is s_j * G_j (s_j the scale when j ran)
        A     = sum_j (1 / s_j) * (s_j * G_j)           (each unscaled by its own scale)
        g     = A / k                                   (the mean)
        a NaN/Inf anywhere in A: skip, s <- s * backoff; else the Adam step on g,
        and s <- s * growth after growth_interval (= 1) good steps
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        theta -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    rng = np.random.default_rng(7)
    k, lr, b1, b2, eps = 3, 1e-2, 0.9, 0.999, 1e-8
    theta0 = rng.standard_normal(13)
    p = theta0.copy()
    opt = fo.Adam([p], lr=lr, betas=(b1, b2), eps=eps, gradient_accumulation_steps=k)
    sc = fo.DynamicLossScale(initial_scale=8.0, growth_interval=1, growth_factor=2.0, backoff_factor=0.25)

    theta, m, v, t, s = theta0.copy(), np.zeros(13), np.zeros(13), 0, 8.0
    cycles = 6
    overflow = (2, 1)                    # (cycle, micro-batch) whose gradient has an Inf
    returned = []
    for c in range(cycles):
        A, bad = np.zeros(13), False
        for j in range(k):
            G = rng.standard_normal(13)
            sent = G * sc.scale
            if (c, j) == overflow:
                sent[4] = np.inf
            assert sc.scale == s                     # the scale never moves mid-cycle
            returned.append(sc.step(opt, [sent]))
            A = A + (1.0 / s) * sent
            bad = bad or not np.isfinite(A).all()
        if bad:
            s *= 0.25
            continue
        g = A / k
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        s *= 2.0
        np.testing.assert_allclose(p, theta, rtol=1e-12, atol=1e-14, err_msg=f"cycle {c}")
    assert sc.scale == s
    assert opt.iterations == t == cycles - 1 and opt.state[p]["step"] == t and opt.nonfinite_count == 1
    expect = [j == k - 1 and c != overflow[0] for c in range(cycles) for j in range(k)]
    assert returned == expect


def test_last_step_applied():
    p = np.zeros(2)
    opt = fo.SGD([p], lr=1.0, gradient_accumulation_steps=2, skip_nonfinite=True)
    assert opt.last_step_applied is False
    opt.step([np.ones(2)])
    assert (opt.last_step_applied, opt.last_step_skipped) == (False, False)     # accumulated
    opt.step([np.ones(2)])
    assert (opt.last_step_applied, opt.last_step_skipped) == (True, False)
    opt.step([np.ones(2)])
    opt.step([np.array([np.nan, 1.0])])
    assert (opt.last_step_applied, opt.last_step_skipped) == (False, True)
    with pytest.raises(ValueError):
        opt.step([np.ones(3)])
    assert opt.last_step_applied is False
    plain = fo.SGD([np.zeros(2)], lr=1.0)
    plain.step([np.ones(2)])
    assert plain.last_step_applied is True
