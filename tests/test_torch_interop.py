"""torch tensors in place (issue 15, section 6).

Two layers:

- the plain API takes CPU torch tensors (any DLPack or buffer-protocol array) as
  parameters and gradients, zero-copy, with the usual checks;
- ``fusedoptim.torch``: ``torch.optim.Optimizer`` subclasses.  On a small conv net + MLP
  trained with autograd, every optimizer torch.optim has follows torch.optim's trajectory
  within the oracle tolerances (tests/reference.py ``TOL``), float32 and float64, with a
  torch LR scheduler too; Lion (not in torch.optim) is checked bit for bit against the
  plain fusedoptim API fed the same gradients.

Why 8 steps: every state buffer is created, RAdam crosses its rho_t > 5 switch (step 6
with the default betas), ASGD's averaging starts (t0 = 3 in the rich case), StepLR halves
the lr twice, and the two models (each running its own forward and backward) stay close
enough that a float32 comparison at 1e-5 says something about the optimizer, not about
the conv net's sensitivity to 1-ulp parameter differences.
"""
from __future__ import annotations

import array
import contextlib
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedoptim as fo  # noqa: E402
import fusedoptim.torch as fot  # noqa: E402
from cases import RICH_CASES, draw_hparams, seed_for  # noqa: E402
from reference import TOL  # noqa: E402

STEPS = 8
# State buffers compared with atol relative to the buffer's largest element, for the reason
# of test_torch_oracle.KNOWN_GAPS (the same case: centered RMSprop with momentum and weight
# decay, float32): torch's CPU kernels use FMA, fusedoptim's rules do not, and an element of
# the momentum buffer that cancels to ~0.03 among elements of ~7 differs by ~1 ulp of 7
# (3.4e-6 > atol 1e-6).  The parameters themselves meet the plain tolerance.
STATE_GAPS = {("float32", "RMSprop")}
TORCH_NAMES = [n for n, _ in RICH_CASES if hasattr(torch.optim, n)]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@contextlib.contextmanager
def default_dtype(dtype):
    """The model and torch's scalar state (``step``, NAdam's ``mu_product``) in ``dtype``
    (see test_torch_oracle.torch_default_dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class Net(torch.nn.Module):
    """conv -> relu -> MLP, plus a parameter outside the graph (its grad stays None)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 3)
        self.unused = torch.nn.Parameter(torch.ones(5))

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.tanh(self.fc1(h)))


def data(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(steps)]


def train_step(model, opt, x, y, sched=None):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss


def hparams(name: str, seed: int) -> dict:
    kwargs = dict(next(kw for n, kw in RICH_CASES if n == name))
    if name == "ASGD":
        kwargs["t0"] = 3.0
    hp = draw_hparams(name, kwargs, seed)
    if "lr" in hp and name != "Adadelta":
        hp["lr"] = min(hp["lr"], 1e-2)       # keep the small net in its smooth regime
    return hp


def assert_params_close(model_a, model_b, dtype, what):
    for (n, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **TOL[np.dtype(dtype)],
                                   err_msg=f"{what}: {n}")


# ------------------------------------------------------------ the plain API
def test_plain_api_updates_tensors_in_place_zero_copy():
    W, b = torch.randn(3, 4), torch.randn(4)
    ptrs = (W.data_ptr(), b.data_ptr())
    Wn, bn = W.numpy().copy(), b.numpy().copy()
    opt, ref = fo.Adam([W, b], lr=0.1), fo.Adam([Wn, bn], lr=0.1)
    for t in range(3):
        gW, gb = torch.full((3, 4), 0.5 + t), torch.full((4,), -1.0)
        opt.step([gW, gb])                                   # tensor gradients
        ref.step([gW.numpy(), gb.numpy()])
    assert (W.data_ptr(), b.data_ptr()) == ptrs
    assert np.array_equal(W.numpy(), Wn) and np.array_equal(b.numpy(), bn) and not np.array_equal(Wn, 0)
    assert np.shares_memory(opt.params[0], W.numpy())       # the optimizer holds a view of W's memory


def test_plain_api_takes_tensor_gradients_for_numpy_params_and_buffer_protocol_arrays():
    p = np.zeros(3, np.float32)
    fo.SGD([p], lr=0.5).step([torch.ones(3)])
    assert np.array_equal(p, [-0.5] * 3)
    q = array.array("d", [1.0, 2.0])                          # the buffer protocol
    fo.SGD([q], lr=1.0).step([array.array("d", [0.5, 0.5])])
    assert list(q) == [0.5, 1.5]


def test_plain_api_named_tensors():
    W, b = torch.ones(2, 3), torch.zeros(3)
    opt = fo.SGD({"W": W, "b": b}, lr=0.5)
    opt.step({"b": torch.ones(3)})                            # no "W": no gradient this step
    assert torch.equal(W, torch.ones(2, 3)) and torch.equal(b, torch.full((3,), -0.5))
    with pytest.raises(TypeError, match=r"gradient of 'W': the Tensor requires grad"):
        opt.step({"W": torch.ones(2, 3, requires_grad=True)})


def test_plain_api_refusals_name_the_argument_and_change_nothing():
    W = torch.zeros(3)
    opt = fo.SGD([W, torch.zeros(2)], lr=1.0)
    with pytest.raises(TypeError, match=r"gradient of params\[1\] \(group 0, index 1\): expected an array"):
        opt.step([torch.ones(3), [1.0, 2.0]])
    with pytest.raises(TypeError, match=r"gradient of params\[0\] .*: the Tensor requires grad; .*t\.detach\(\)"
                                        r".*fusedoptim\.torch"):
        opt.step([torch.ones(3, requires_grad=True), None])
    with pytest.raises(TypeError, match=r"gradient of params\[1\].*dtype int64 does not match"):
        opt.step([torch.ones(3), torch.ones(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"gradient of params\[1\].*shape \(3,\) does not match"):
        opt.step([torch.ones(3), torch.ones(3)])
    assert np.array_equal(W.numpy(), np.zeros(3)) and opt.iterations == 0
    with pytest.raises(TypeError, match=r"params\[0\] \(group 0, index 0\): the Parameter requires grad"):
        fo.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"params\[0\] .*not C-contiguous"):
        fo.Adam([torch.zeros(3, 4).T])
    with pytest.raises(TypeError, match=r"params\[0\] .*dtype float16 is not supported"):
        fo.Adam([torch.zeros(3, dtype=torch.float16)])
    with pytest.raises(TypeError, match=r"got a single Tensor; wrap it in a list"):
        fo.Adam(torch.zeros(3))


def test_plain_api_refuses_a_device_tensor():
    class CudaLike:          # what a CUDA tensor says through DLPack (no GPU needed)
        requires_grad = False

        def __dlpack__(self, **kw):
            raise AssertionError("must not be exported")

        def __dlpack_device__(self):
            return (2, 0)

    with pytest.raises(TypeError, match=r"params\[0\] \(group 0, index 0\): the CudaLike lives on a CUDA device"):
        fo.SGD([CudaLike()], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] \(group 0, index 0\): the Tensor has no DLPack device"):
        fo.SGD([torch.zeros(3, device="meta")], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] \(group 0, index 1\): the Tensor has no DLPack device"):
        fot.SGD([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=0.1)


# ----------------------------------------------------------- fusedoptim.torch
def test_every_fusedoptim_optimizer_has_a_torch_class():
    """One torch class per optimizer of fusedoptim.optim (Muon, LBFGS and Lookahead
    included): a generated FusedOptimizer subclass with the same signature for every one
    that steps from gradients, torch's closure LBFGS, and the Lookahead wrapper."""
    import inspect
    for name in fo.optim.__all__:
        cls = getattr(fot, name)
        if name == "Lookahead":
            assert inspect.signature(cls) == inspect.signature(fo.Lookahead)
            continue
        assert issubclass(cls, torch.optim.Optimizer) and cls.fused_class is getattr(fo, name)
        if name == "LBFGS":
            def plain(c):
                return [(q.name, q.default) for q in inspect.signature(c).parameters.values()]
            assert plain(cls) == plain(torch.optim.LBFGS)         # names and defaults (no annotations)
        else:
            assert issubclass(cls, fot.FusedOptimizer)
            assert inspect.signature(cls) == inspect.signature(getattr(fo, name))
    assert set(fot.OPTIMIZERS) == set(fo.optim.__all__)


@pytest.mark.parametrize("sched", [None, "StepLR"])
@pytest.mark.parametrize("name", TORCH_NAMES)
def test_trajectory_matches_torch_optim(name, sched, dtype):
    seed = seed_for(name, "interop", dtype.name)
    hp = hparams(name, seed)
    with default_dtype(dtype):
        torch.manual_seed(seed % 2 ** 31)
        ref_model = Net()
        model = copy.deepcopy(ref_model)
        ref = getattr(torch.optim, name)(ref_model.parameters(), foreach=False, **hp)
        opt = getattr(fot, name)(model.parameters(), **hp)
        ptrs = [p.data_ptr() for p in model.parameters()]
        scheds = [None, None]
        if sched:
            scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ref, opt)]
        for t, (x, y) in enumerate(data(seed, STEPS)):
            want = train_step(ref_model, ref, x, y, scheds[0])
            got = train_step(model, opt, x, y, scheds[1])
            np.testing.assert_allclose(got.item(), want.item(), **TOL[dtype], err_msg=f"loss at step {t}")
            assert_params_close(model, ref_model, dtype, f"{name} step {t}")
        assert [p.data_ptr() for p in model.parameters()] == ptrs        # updated in place
        assert torch.equal(model.unused, torch.ones(5, dtype=model.unused.dtype))   # grad None: skipped
        if sched:
            assert opt.param_groups[0]["lr"] == pytest.approx(hp["lr"] * 0.25)
            assert opt.fused.get_last_lr() == [opt.param_groups[0]["lr"]]   # the last step (epoch 7) used it
        for (n, p), rp in zip(model.named_parameters(), ref_model.parameters()):
            if n == "unused":
                assert p not in opt.state or not opt.state[p]
                continue
            for k, v in ref.state[rp].items():
                got_v = opt.state[p][k]
                if isinstance(got_v, torch.Tensor):
                    tol = dict(TOL[dtype])
                    if (dtype.name, name) in STATE_GAPS:
                        tol["atol"] *= float(np.abs(v.numpy()).max())
                    np.testing.assert_allclose(got_v.numpy(), v.numpy(), **tol, err_msg=f"{n} {k}")
                else:
                    np.testing.assert_allclose(got_v, v.item(), rtol=1e-6, err_msg=f"{n} {k}")


def test_lion_matches_the_plain_api_bit_for_bit(dtype):
    with default_dtype(dtype):
        torch.manual_seed(3)
        model = Net()
        mirror = [p.detach().numpy().copy() for p in model.parameters()]
        opt = fot.Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
        ref = fo.Lion(mirror, lr=1e-3, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for t, (x, y) in enumerate(data(5, STEPS)):
            train_step(model, opt, x, y)
            ref.param_groups[0]["lr"] = 1e-3 * 0.5 ** (t // 2)
            ref.step([None if p.grad is None else p.grad.numpy() for p in model.parameters()])
            sched.step()
            for p, m in zip(model.parameters(), mirror):
                assert np.array_equal(p.detach().numpy(), m)


def test_state_dict_round_trip_and_torch_save():
    torch.manual_seed(0)
    model = Net()
    opt = fot.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    batches = data(1, 10)
    for x, y in batches[:5]:
        train_step(model, opt, x, y, sched)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = Net()
    model2.load_state_dict(ck["model"])
    opt2 = fot.Adam(model2.parameters(), lr=123.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and opt2.param_groups[0]["amsgrad"]
    assert opt2.param_groups[0]["initial_lr"] == 1e-2
    for x, y in batches[5:]:
        train_step(model, opt, x, y, sched)
        train_step(model2, opt2, x, y, sched2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    p0 = model.conv.weight
    assert opt.state[p0]["step"] == 10 and opt.state[p0]["max_exp_avg_sq"].shape == p0.shape


def test_loads_a_torch_optim_state_dict_and_continues_like_torch():
    """Switching the import keeps old checkpoints: a torch.optim.Adam state_dict loads."""
    torch.manual_seed(1)
    ref_model = Net()
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    batches = data(2, 8)
    for x, y in batches[:4]:
        train_step(ref_model, ref, x, y)
    model = copy.deepcopy(ref_model)
    opt = fot.AdamW(model.parameters())
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["weight_decay"] == 0.1 and "foreach" not in opt.param_groups[0]
    for x, y in batches[4:]:
        train_step(ref_model, ref, x, y)
        train_step(model, opt, x, y)
    assert_params_close(model, ref_model, np.float32, "AdamW after loading torch's state")


def test_add_param_group_zero_grad_closure_and_state_views():
    torch.manual_seed(2)
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    ra, rb = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    opt = fot.SGD([a], lr=0.1, momentum=0.9)
    ref = torch.optim.SGD([ra], lr=0.1, momentum=0.9, foreach=False)
    for o, p, q in ((opt, a, b), (ref, ra, rb)):
        o.add_param_group({"params": q, "lr": 0.5})
        for _ in range(3):
            def closure(p=p, q=q, o=o):
                o.zero_grad()
                loss = (p ** 2).sum() + (q ** 3).sum()
                loss.backward()
                return loss
            loss = o.step(closure)
        assert isinstance(loss, torch.Tensor)
    np.testing.assert_allclose(a.detach().numpy(), ra.detach().numpy(), **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(b.detach().numpy(), rb.detach().numpy(), **TOL[np.dtype(np.float32)])
    assert opt.param_groups[1]["lr"] == 0.5 and opt.fused.param_groups[1]["lr"] == 0.5
    buf = opt.state[b]["momentum_buffer"]
    np.testing.assert_allclose(buf.numpy(), ref.state[rb]["momentum_buffer"].numpy(), rtol=1e-5, atol=1e-6)
    assert np.shares_memory(buf.numpy(), opt.fused.state[opt.fused.params[1]]["momentum_buffer"])
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    before = a.detach().clone()
    opt.step()                                               # no gradients: nothing moves
    assert torch.equal(a, before)


def test_add_param_group_refused_by_fusedoptim_leaves_both_sides_unchanged():
    opt = fot.Adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(TypeError, match=r"dtype float64 differs from float32"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]})
    assert len(opt.param_groups) == 1 and len(opt.fused.param_groups) == 1
    with pytest.raises(ValueError, match=r"lr: -1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": -1.0})
    assert len(opt.param_groups) == 1 and len(opt.fused.param_groups) == 1


def test_refusals():
    with pytest.raises(ValueError, match=r"not C-contiguous"):
        fot.Adam([torch.nn.Parameter(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))])
    with pytest.raises(ValueError, match=r"can't optimize a non-leaf Tensor"):
        fot.Adam([torch.zeros(3, requires_grad=True) * 2])
    with pytest.raises(ValueError, match=r"Invalid"):
        fot.Adam([torch.nn.Parameter(torch.zeros(3))], lr=-1.0)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = fot.SGD([p], lr=0.1)
    with pytest.raises(TypeError, match=r"can't be pickled or deep-copied: .*state_dict\(\)"):
        copy.deepcopy(opt)
    p.data = torch.ones(3)                                   # memory replaced behind the optimizer
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"params\[0\] \(group 0, index 0\): the parameter's memory changed"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_autograd_sees_the_in_place_update():
    """As with torch.optim, using a graph built before the step raises instead of giving
    gradients of stale values: the step bumps the parameters' version counters."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = fot.SGD([p], lr=0.1)
    (p * p).sum().backward()
    y = (p * p).sum()
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_readme_snippet_runs(tmp_path, monkeypatch):
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    start = text.index("## torch CPU tensors, in place")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README fusedoptim.torch snippet", "exec"), scope)
    assert isinstance(scope["opt"], fot.AdamW) and scope["opt"].fused.iterations == 100
    assert scope["loss"].item() < 1.0 and (tmp_path / "ckpt.pt").exists()


def test_readme_lbfgs_lookahead_muon_snippet_runs():
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    start = text.index("The classes come from the registry `fusedoptim.optim.registry`")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README fusedoptim.torch LBFGS snippet", "exec"), scope)
    assert isinstance(scope["opt"], fot.LBFGS) and scope["losses"][0] > scope["losses"][-1]
    assert isinstance(scope["la"], fot.Lookahead) and isinstance(scope["opt_muon"], fot.Muon)


def test_clip_functions_take_tensor_gradients_in_place():
    torch.manual_seed(4)
    grads = [torch.randn(5) * 3, torch.randn(3, 2) * 3]
    ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    want = torch.nn.utils.clip_grad_norm_(ps, 1.0)
    got = fo.clip_grad_norm(grads, 1.0)                      # the tensors themselves are clipped
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)
    for p, g in zip(ps, grads):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------- Muon, LBFGS and Lookahead through fusedoptim.torch
class MatrixNet(torch.nn.Module):
    """Muon's parameters: weight matrices only (torch.optim.Muon refuses the others)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(36, 16, bias=False)
        self.fc2 = torch.nn.Linear(16, 3, bias=False)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


@pytest.fixture
def _no_bf16(monkeypatch):
    """torch's Newton-Schulz casts to bfloat16 (fusedoptim runs it in the parameter's
    dtype): a same-dtype copy instead, as tests/test_muon.py's oracle does."""
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.clone())


@pytest.mark.parametrize("kw", [{}, {"lr": 0.02, "weight_decay": 0.01, "nesterov": False,
                                     "adjust_lr_fn": "match_rms_adamw"}], ids=["defaults", "options"])
def test_muon_matches_torch_optim(_no_bf16, kw, dtype):
    seed = seed_for("Muon", "interop", dtype.name, str(kw))
    with default_dtype(dtype):
        torch.manual_seed(seed % 2 ** 31)
        ref_model = MatrixNet()
        model = copy.deepcopy(ref_model)
        ref = torch.optim.Muon(ref_model.parameters(), **kw)
        opt = fot.Muon(model.parameters(), **kw)
        for t, (x, y) in enumerate(data(seed, STEPS)):
            want = train_step(ref_model, ref, x, y)
            got = train_step(model, opt, x, y)
            # float32: torch.testing's float32 tolerances, as tests/test_muon.py (matmul sums differ)
            tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
            np.testing.assert_allclose(got.item(), want.item(), **tol, err_msg=f"loss at step {t}")
            for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
                np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **tol, err_msg=f"Muon {t} {n}")
        for p, rp in zip(model.parameters(), ref_model.parameters()):
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(),
                                       ref.state[rp]["momentum_buffer"].numpy(), **tol)


def test_muon_refuses_a_bias_like_torch():
    lin = torch.nn.Linear(4, 3)
    w0 = lin.weight.detach().clone()
    with pytest.raises(ValueError, match=r"Muon only supports 2-D parameters, params\[1\] has shape \(3,\)"):
        fot.Muon(lin.parameters())
    with pytest.raises(ValueError):
        torch.optim.Muon(lin.parameters())
    assert torch.equal(lin.weight, w0)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_matches_torch_optim(line_search_fn, dtype):
    """torch's closure convention (zero_grad, loss, backward, return loss) on the conv net,
    full batch: the same trajectory as torch.optim.LBFGS, the unused parameter (grad None)
    counted as zeros."""
    seed = seed_for("LBFGS", "interop", dtype.name, str(line_search_fn))
    kw = dict(lr=0.5, max_iter=6, history_size=4, line_search_fn=line_search_fn)
    with default_dtype(dtype):
        torch.manual_seed(seed % 2 ** 31)
        ref_model = Net()
        model = copy.deepcopy(ref_model)
        x, y = data(seed, 1)[0]
        ref = torch.optim.LBFGS(ref_model.parameters(), **kw)
        opt = fot.LBFGS(model.parameters(), **kw)

        def closure_of(m, o):
            def closure():
                o.zero_grad()
                loss = torch.nn.functional.cross_entropy(m(x), y)
                loss.backward()
                return loss
            return closure

        ptrs = [p.data_ptr() for p in model.parameters()]
        # float32: the flat dot products sum in another order (NumPy's BLAS vs torch)
        tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        for t in range(3):
            want = ref.step(closure_of(ref_model, ref))
            got = opt.step(closure_of(model, opt))
            assert isinstance(got, torch.Tensor)                       # the first closure's loss, as torch
            np.testing.assert_allclose(got.item(), want.item(), **tol, err_msg=f"loss at step {t}")
            for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
                np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **tol, err_msg=f"{t} {n}")
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        st, tst = opt.state_dict()["state"][0], ref.state[next(iter(ref_model.parameters()))]
        assert st["n_iter"] == tst["n_iter"] and st["func_evals"] == tst["func_evals"]
        np.testing.assert_allclose(st["d"], tst["d"].numpy(), **tol)


def test_lbfgs_needs_a_closure_and_changes_nothing():
    model = Net()
    opt = fot.LBFGS(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="LBFGS.step needs a closure"):
        opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert opt.state_dict()["state"] == {}
    with pytest.raises(ValueError, match="per-parameter options"):
        fot.LBFGS([{"params": [model.fc1.weight]}, {"params": [model.fc2.weight]}])


def test_lookahead_around_a_fusedoptim_torch_optimizer():
    """fusedoptim.torch.Lookahead(fusedoptim.torch.SGD(...)) follows pytorch-optimizer's
    Lookahead around torch.optim.SGD on the conv net (float64), a scheduler on the inner lr."""
    po = pytest.importorskip("pytorch_optimizer")
    seed = seed_for("Lookahead", "interop")
    with default_dtype(np.float64):
        torch.manual_seed(seed % 2 ** 31)
        ref_model = Net()
        model = copy.deepcopy(ref_model)
        ref = po.Lookahead(torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9), k=3, alpha=0.5)
        la = fot.Lookahead(fot.SGD(model.parameters(), lr=0.05, momentum=0.9), k=3, alpha=0.5)
        for t, (x, y) in enumerate(data(seed, STEPS)):
            for m, o in ((ref_model, ref), (model, la)):
                o.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
                o.step()
            assert_params_close(model, ref_model, np.float64, f"Lookahead step {t}")
        sd = la.state_dict()
        assert sd["kind"] == "Lookahead" and sd["param_groups"][0]["lookahead_counter"] == STEPS % 3
    with pytest.raises(TypeError, match="wraps a fusedoptim.torch optimizer"):
        fot.Lookahead(torch.optim.SGD(Net().parameters(), lr=0.1))
