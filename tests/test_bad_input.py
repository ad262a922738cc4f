"""Bad inputs: each raises the documented exception type with a message that names the
parameter (``params[i] (group g, index j)``) or the group (``param group g``) and the
problem, and leaves parameters, state, groups and the iteration count exactly as before.

"Before" is a deep snapshot taken after a few good steps, so state exists; one parameter
never had a gradient, so a bad step must not create state for it either.
"""
import numpy as np
import pytest

import fusedoptim
from cases import RICH_CASES, assert_same_snapshot, snapshot
from reference import DEFAULTS

NAN, INF = float("nan"), float("inf")
F64 = np.float64


def ones(*shape, dtype=F64):
    return np.ones(shape, dtype=dtype)


def fortran():
    return np.asfortranarray(np.ones((3, 4)))


def strided():
    return np.ones(10)[::2]


def read_only():
    a = np.ones(4)
    a.flags.writeable = False
    return a


def overlapping_views():
    base = np.ones(10)
    return [base[:6], base[4:]]


def twice():
    a = np.ones(3)
    return [a, a]


P = r"params\[{p}\] \(group {g}, index 0\)"      # the group's first parameter
P1 = r"params\[{p1}\] \(group {g}, index 1\)"    # the group's second parameter
G = r"param group {g}"

# (id, optimizer, params of the group, hyperparameters, exception, message regex)
GROUP_CASES = [
    # -------- arrays
    ("int param", "Adam", lambda: [np.arange(3)], {}, TypeError, P + r": dtype int64 is not supported"),
    ("bool param", "Adam", lambda: [np.ones(3, bool)], {}, TypeError, P + r": dtype bool is not supported"),
    ("float16 param", "Adam", lambda: [ones(3, dtype=np.float16)], {}, TypeError, P + r": dtype float16"),
    ("complex param", "SGD", lambda: [ones(3, dtype=np.complex128)], {}, TypeError, P + r": dtype complex128"),
    ("object param", "SGD", lambda: [np.array([1.0, 2.0], dtype=object)], {}, TypeError, P + r": dtype object"),
    ("list param", "SGD", lambda: [[1.0, 2.0]], {}, TypeError,
     P + r": expected an array \(numpy\.ndarray, a CPU torch tensor, .*\), got list"),
    ("mixed float32/float64", "Adam", lambda: [ones(3), ones(3, dtype=np.float32)], {}, TypeError,
     P1 + r": dtype float32 differs from float64"),
    ("non-C-contiguous (Fortran) param", "Adam", lambda: [ones(2), fortran()], {}, ValueError,
     P1 + r": array is not C-contiguous"),
    ("strided param", "RMSprop", lambda: [strided()], {}, ValueError, P + r": array is not C-contiguous"),
    ("read-only param", "SGD", lambda: [ones(2), read_only()], {}, ValueError, P1 + r": array is read-only"),
    ("same array twice", "Adam", twice, {}, ValueError, P1 + r": the same array appears more than once"),
    ("overlapping views", "Adam", overlapping_views, {}, ValueError, r"\(group {g}, index [01]\): shares memory"),
    # -------- hyperparameters
    ("negative lr", "Adam", lambda: [ones(3)], dict(lr=-1e-3), ValueError, G + r": lr.*-0.001.*>= 0"),
    ("NaN lr", "SGD", lambda: [ones(3)], dict(lr=NAN), ValueError, G + r": lr must be finite"),
    ("inf lr", "SGD", lambda: [ones(3)], dict(lr=INF), ValueError, G + r": lr must be finite"),
    ("string lr", "SGD", lambda: [ones(3)], dict(lr="0.1"), TypeError, G + r": lr must be a real number"),
    ("bool lr", "SGD", lambda: [ones(3)], dict(lr=True), TypeError, G + r": lr must be a real number"),
    ("negative eps", "Adam", lambda: [ones(3)], dict(eps=-1e-8), ValueError, G + r": epsilon"),
    ("NaN eps", "Adagrad", lambda: [ones(3)], dict(eps=NAN), ValueError, G + r": epsilon value must be finite"),
    ("negative weight_decay", "AdamW", lambda: [ones(3)], dict(weight_decay=-0.1), ValueError,
     G + r": weight_decay"),
    ("NaN weight_decay", "SGD", lambda: [ones(3)], dict(weight_decay=NAN), ValueError, G + r": weight_decay"),
    ("negative momentum", "SGD", lambda: [ones(3)], dict(momentum=-0.5), ValueError, G + r": momentum"),
    ("NaN momentum", "RMSprop", lambda: [ones(3)], dict(momentum=NAN), ValueError, G + r": momentum"),
    ("dampening > 1", "SGD", lambda: [ones(3)], dict(momentum=0.9, dampening=1.5), ValueError, G + r": dampening"),
    ("beta1 = 1", "Adam", lambda: [ones(3)], dict(betas=(1.0, 0.999)), ValueError, G + r".*beta.*index 0"),
    ("beta2 = 1", "NAdam", lambda: [ones(3)], dict(betas=(0.9, 1.0)), ValueError, G + r".*beta.*index 1"),
    ("negative beta", "Adamax", lambda: [ones(3)], dict(betas=(-0.1, 0.9)), ValueError, G + r".*beta.*index 0"),
    ("NaN beta", "RAdam", lambda: [ones(3)], dict(betas=(0.9, NAN)), ValueError, G + r".*beta.*index 1"),
    ("three betas", "Adam", lambda: [ones(3)], dict(betas=(0.9, 0.99, 0.999)), ValueError, G + r": betas"),
    ("string beta", "Adam", lambda: [ones(3)], dict(betas=("0.9", 0.99)), TypeError, G + r".*beta.*index 0"),
    ("negative alpha", "RMSprop", lambda: [ones(3)], dict(alpha=-0.1), ValueError, G + r": alpha"),
    ("rho > 1", "Adadelta", lambda: [ones(3)], dict(rho=1.5), ValueError, G + r": rho"),
    ("negative lr_decay", "Adagrad", lambda: [ones(3)], dict(lr_decay=-1e-3), ValueError, G + r": lr_decay"),
    ("negative initial_accumulator_value", "Adagrad", lambda: [ones(3)], dict(initial_accumulator_value=-1.0),
     ValueError, G + r": initial_accumulator_value"),
    ("etaminus = 0", "Rprop", lambda: [ones(3)], dict(etas=(0.0, 1.2)), ValueError, G + r": Invalid eta values"),
    ("etaplus = 1", "Rprop", lambda: [ones(3)], dict(etas=(0.5, 1.0)), ValueError, G + r": Invalid eta values"),
    ("inf etaplus", "Rprop", lambda: [ones(3)], dict(etas=(0.5, INF)), ValueError, G + r": Invalid eta values"),
    ("NaN etaminus", "Rprop", lambda: [ones(3)], dict(etas=(NAN, 1.2)), ValueError, G + r": Invalid eta values"),
    ("three etas", "Rprop", lambda: [ones(3)], dict(etas=(0.5, 1.2, 2.0)), ValueError, G + r": etas must be a pair"),
    ("string eta", "Rprop", lambda: [ones(3)], dict(etas=(0.5, "1.2")), TypeError,
     G + r": etas value at index 1 must be a real number"),
    ("negative step size", "Rprop", lambda: [ones(3)], dict(step_sizes=(-1e-6, 50)), ValueError,
     G + r": .*step size at index 0"),
    ("inf step size", "Rprop", lambda: [ones(3)], dict(step_sizes=(1e-6, INF)), ValueError,
     G + r": step size at index 1 must be finite"),
    ("min step size > max", "Rprop", lambda: [ones(3)], dict(step_sizes=(1.0, 0.5)), ValueError,
     G + r": Invalid step sizes: min 1.0 > max 0.5"),
    ("beta1 = 1 (Lion)", "Lion", lambda: [ones(3)], dict(betas=(1.0, 0.99)), ValueError, G + r".*beta.*index 0"),
    ("negative weight_decay (Lion)", "Lion", lambda: [ones(3)], dict(weight_decay=-0.1), ValueError,
     G + r": weight_decay"),
    ("negative momentum_decay", "NAdam", lambda: [ones(3)], dict(momentum_decay=-1e-3), ValueError,
     G + r": momentum_decay"),
    ("int amsgrad", "Adam", lambda: [ones(3)], dict(amsgrad=1), TypeError, G + r": amsgrad must be a bool"),
    ("string maximize", "SGD", lambda: [ones(3)], dict(maximize="yes"), TypeError, G + r": maximize must be a bool"),
    ("None decoupled_weight_decay", "RAdam", lambda: [ones(3)], dict(decoupled_weight_decay=None), TypeError,
     G + r": decoupled_weight_decay must be a bool"),
    ("int centered", "RMSprop", lambda: [ones(3)], dict(centered=0), TypeError, G + r": centered must be a bool"),
    ("int nesterov", "SGD", lambda: [ones(3)], dict(momentum=0.9, nesterov=1), TypeError,
     G + r": nesterov must be a bool"),
    ("nesterov without momentum", "SGD", lambda: [ones(3)], dict(momentum=0.0, nesterov=True), ValueError,
     G + r": Nesterov momentum requires a momentum"),
    ("nesterov with dampening", "SGD", lambda: [ones(3)], dict(momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, G + r": Nesterov momentum requires a momentum and zero dampening"),
    ("unknown hyperparameter", "Adam", lambda: [ones(3)], dict(momentum=0.9), ValueError,
     G + r": unknown hyperparameter.*momentum"),
]


def _group_case_params():
    return [pytest.param(*c[1:], id=c[0]) for c in GROUP_CASES]


@pytest.mark.parametrize("name,make,hp,exc,match", _group_case_params())
def test_bad_group_at_construction(name, make, hp, exc, match):
    params = make()
    copies = [np.array(p, copy=True) if isinstance(p, np.ndarray) else list(p) for p in params]
    with pytest.raises(exc, match=match.format(g=0, p=0, p1=1)):
        getattr(fusedoptim, name)([dict(params=params, **hp)])
    for p, c in zip(params, copies):
        assert np.array_equal(p, c)


def _stepped_optimizer(name, n_steps=3):
    """An optimizer with state: params[0..1] stepped, params[2] never had a gradient."""
    base = np.linspace(-1, 1, 10)       # params[0] is a view: a gradient can overlap it partly
    params = [base[:5], np.linspace(0.5, 2, 12).reshape(4, 3), np.full((), 0.25)]
    kw = dict(momentum=0.9) if name in ("SGD", "RMSprop") else {}
    opt = getattr(fusedoptim, name)(params, **kw)
    for t in range(n_steps):
        opt.step([np.full(5, 0.1 + t), np.full((4, 3), -0.2 * t), None])
    return opt, params


@pytest.mark.parametrize("name,make,hp,exc,match", _group_case_params())
def test_bad_group_in_add_param_group_changes_nothing(name, make, hp, exc, match):
    opt, params = _stepped_optimizer(name)
    group = dict(params=make(), **hp)
    before = snapshot(opt, params)
    with pytest.raises(exc, match=match.format(g=1, p=3, p1=4)):
        opt.add_param_group(group)
    assert_same_snapshot(before, snapshot(opt, params))
    assert len(opt.param_groups) == 1
    opt.step([np.ones(5), np.ones((4, 3)), np.ones(())])      # still usable, and learned nothing new
    assert opt.iterations == 4


def test_unknown_keyword_argument():
    with pytest.raises(TypeError, match="momentum"):
        fusedoptim.Adam([ones(3)], momentum=0.9)


def test_single_array_instead_of_a_list():
    with pytest.raises(TypeError, match=r"wrap it in a list"):
        fusedoptim.SGD(ones(3))


def test_empty_parameter_list():
    with pytest.raises(ValueError, match="empty parameter list"):
        fusedoptim.Adam([])


def test_group_without_params_and_non_dict_group():
    with pytest.raises(ValueError, match=r"param group 0 has no 'params'"):
        fusedoptim.Adam([{"lr": 0.1}])
    with pytest.raises(TypeError, match=r"param group 1 must be a dict"):
        fusedoptim.Adam([{"params": [ones(2)]}, ones(2)])


def test_same_array_in_two_groups_at_construction():
    """The message gives the flat index of the second occurrence: params[1]."""
    a = np.ones(4)
    with pytest.raises(ValueError, match=r"params\[1\] \(group 1, index 0\): the same array"):
        fusedoptim.Adam([{"params": [a]}, {"params": [a]}])


def test_overlap_across_groups_at_construction():
    base = np.ones(8)
    with pytest.raises(ValueError, match=r"\(group 1, index 0\): shares memory"):
        fusedoptim.Adam([{"params": [base[:5]]}, {"params": [base[3:]]}])


def test_add_param_group_rejects_known_or_overlapping_params():
    opt, params = _stepped_optimizer("Adam")
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"params\[3\] \(group 1, index 0\): the same array"):
        opt.add_param_group({"params": [params[0]]})
    with pytest.raises(ValueError, match=r"params\[3\] \(group 1, index 0\): shares memory"):
        opt.add_param_group({"params": [params[1].reshape(-1)[2:5]]})
    assert_same_snapshot(before, snapshot(opt, params))


def test_labels_count_params_of_earlier_groups_at_construction():
    """params[i] in messages is the flat index, also for groups staged in the same call."""
    with pytest.raises(TypeError, match=r"params\[2\] \(group 1, index 0\): dtype int64"):
        fusedoptim.Adam([{"params": [ones(2), ones(2)]}, {"params": [np.arange(2)]}])


def test_dtype_differs_from_other_groups_at_construction():
    """float32 and float64 can't be mixed: rejected when the optimizer is built, not at
    the first step."""
    with pytest.raises(TypeError, match=r"params\[1\] \(group 1, index 0\): dtype float32 differs"):
        fusedoptim.Adam([{"params": [ones(2)]}, {"params": [ones(2, dtype=np.float32)]}])


def test_dtype_differs_from_other_groups_in_add_param_group():
    opt, params = _stepped_optimizer("Adam")
    before = snapshot(opt, params)
    with pytest.raises(TypeError, match=r"params\[3\] \(group 1, index 0\): dtype float32 differs"):
        opt.add_param_group({"params": [ones(2, dtype=np.float32)]})
    assert_same_snapshot(before, snapshot(opt, params))


def test_disjoint_views_of_one_buffer_are_fine():
    base = np.zeros(10)
    a, b = base[:5], base[5:]
    opt = fusedoptim.SGD([a, b], lr=1.0)
    opt.step([np.ones(5), np.full(5, 2.0)])
    assert np.array_equal(base, [-1.0] * 5 + [-2.0] * 5)


def test_zero_size_params_work():
    params = [np.zeros((0,)), np.ones(3), np.zeros((2, 0, 4), np.float64)]
    for name in ("SGD", "Adam", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Adadelta", "AdamW", "Rprop",
                 "Lion", "ASGD", "AdaBelief", "Yogi", "Adan", "Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD"):
        opt = getattr(fusedoptim, name)(params)
        opt.step([np.zeros((0,)), np.ones(3), np.zeros((2, 0, 4))])
        assert opt.state[params[2]]["step"] == 1


# ------------------------------------------------------------------ bad steps
def _grads():
    return [np.full(5, 0.5), np.full((4, 3), 0.25), np.full((), 1.0)]


def _replace(i, value):
    def setup(opt, params):
        gs = _grads()
        gs[i] = value(params) if callable(value) else value
        return gs
    return setup


def _set_group(**kv):
    def setup(opt, params):
        opt.param_groups[0].update(kv)
        return _grads()
    return setup


def _schedule(value_at_3):
    def setup(opt, params):
        opt.param_groups[0]["lr"] = lambda it: 0.01 if it != 3 else value_at_3
        return _grads()
    return setup


def _schedule_raises(opt, params):
    def sched(it):
        raise RuntimeError("schedule exploded")
    opt.param_groups[0]["lr"] = sched
    return _grads()


def _make_read_only(opt, params):
    params[1].flags.writeable = False
    return _grads()


G0 = r"gradient of params\[0\] \(group 0, index 0\)"
G1 = r"gradient of params\[1\] \(group 0, index 1\)"
G2 = r"gradient of params\[2\] \(group 0, index 2\)"

STEP_CASES = [
    ("float32 grad for float64 param", _replace(1, np.ones((4, 3), np.float32)), TypeError,
     G1 + r": dtype float32 does not match the parameter's float64"),
    ("int grad", _replace(2, np.array(1)), TypeError, G2 + r": dtype int64 does not match"),
    ("complex grad", _replace(1, np.ones((4, 3), complex)), TypeError, G1 + r": dtype complex128"),
    ("Fortran grad", _replace(1, lambda ps: np.asfortranarray(np.ones((4, 3)))), ValueError,
     G1 + r": array is not C-contiguous"),
    ("strided grad", _replace(1, lambda ps: np.ones((4, 6))[:, ::2]), ValueError, G1 + r": array is not C-contiguous"),
    ("grad shape mismatch", _replace(1, np.ones((4, 4))), ValueError, G1 + r": shape \(4, 4\) does not match"),
    ("grad same size other shape", _replace(1, np.ones(12)), ValueError, G1 + r": shape \(12,\) does not match"),
    ("grad transposed shape", _replace(1, np.ones((3, 4))), ValueError, G1 + r": shape \(3, 4\)"),
    ("0-d param, 1-element grad", _replace(2, np.ones(1)), ValueError, G2 + r": shape \(1,\)"),
    ("list grad", _replace(1, [[1.0] * 3] * 4), TypeError,
     G1 + r": expected an array \(numpy\.ndarray, .*\), got list"),
    ("float grad", _replace(2, 1.0), TypeError, G2 + r": expected an array \(numpy\.ndarray, .*\), got float"),
    ("grad is its param", _replace(1, lambda ps: ps[1]), ValueError, G1 + r": .*shares memory with its parameter"),
    ("grad is a view of its param", _replace(1, lambda ps: ps[1].view()), ValueError, G1 + r": .*shares memory"),
    ("grad overlaps its param", _replace(0, lambda ps: ps[0].base[2:7]), ValueError,
     G0 + r": .*shares memory with its parameter"),
    ("too few grads", lambda opt, ps: _grads()[:2], ValueError, r"expected 3 gradients, one per parameter, got 2"),
    ("too many grads", lambda opt, ps: _grads() + [np.ones(1)], ValueError, r"expected 3 gradients.*got 4"),
    ("one array instead of a list", lambda opt, ps: np.ones(5), TypeError, r"single ndarray; wrap it in a list"),
    ("param made read-only", _make_read_only, ValueError, r"params\[1\] \(group 0, index 1\): array is read-only"),
    ("lr set to NaN", _set_group(lr=NAN), ValueError, r"param group 0: lr must be finite"),
    ("lr set negative", _set_group(lr=-0.5), ValueError, r"param group 0: .*lr.*-0.5"),
    ("lr set to a string", _set_group(lr="fast"), TypeError, r"param group 0: lr must be a real number"),
    ("eps set to NaN", _set_group(eps=NAN), ValueError, r"param group 0: epsilon value must be finite"),
    ("weight_decay set negative", _set_group(weight_decay=-1.0), ValueError, r"param group 0: .*weight_decay"),
    ("maximize set to an int", _set_group(maximize=1), TypeError, r"param group 0: maximize must be a bool"),
    ("schedule returns NaN", _schedule(NAN), ValueError,
     r"param group 0: lr \(from schedule at iteration 3\) must be finite"),
    ("schedule returns negative", _schedule(-1.0), ValueError, r"param group 0: .*lr \(from schedule at iteration 3\)"),
    ("schedule returns None", _schedule(None), TypeError, r"param group 0: lr \(from schedule.*real number"),
    ("schedule raises", _schedule_raises, RuntimeError, r"schedule exploded"),
]

# optimizer-specific hyperparameters set to bad values between steps
SPECIFIC = {
    "SGD": ("momentum", NAN, ValueError, r"momentum"),
    "Adam": ("betas", (0.9, 1.0), ValueError, r"beta parameter at index 1"),
    "AdamW": ("betas", (NAN, 0.9), ValueError, r"beta parameter at index 0"),
    "Adagrad": ("lr_decay", -1.0, ValueError, r"lr_decay"),
    "RMSprop": ("alpha", NAN, ValueError, r"alpha"),
    "Adamax": ("betas", (1.5, 0.9), ValueError, r"beta parameter at index 0"),
    "NAdam": ("momentum_decay", INF, ValueError, r"momentum_decay"),
    "RAdam": ("betas", (0.9, -0.5), ValueError, r"beta parameter at index 1"),
    "Adadelta": ("rho", 2.0, ValueError, r"rho"),
    "Rprop": ("etas", (1.2, 0.5), ValueError, r"Invalid eta values"),
    "Lion": ("betas", (0.9, NAN), ValueError, r"beta parameter at index 1"),
    "ASGD": ("lambd", -1e-4, ValueError, r"lambd"),
    "AdaBelief": ("rectify", 1, TypeError, r"rectify must be a bool"),
    "Yogi": ("initial_accumulator", -1.0, ValueError, r"initial_accumulator"),
    "Adan": ("betas", (0.9, 0.9), ValueError, r"betas must be a triple"),
    "Ftrl": ("learning_rate_power", 0.5, ValueError, r"learning_rate_power"),
    "ScheduleFreeAdamW": ("warmup_steps", 1.5, TypeError, r"warmup_steps must be an integer"),
    "ScheduleFreeSGD": ("momentum", 1.0, ValueError, r"momentum"),
}


def _step_case_params():
    out = []
    for name, _ in RICH_CASES:
        for cid, setup, exc, match in STEP_CASES:
            if cid.startswith("eps") and "eps" not in DEFAULTS[name]:
                continue
            out.append(pytest.param(name, setup, exc, match, id=f"{name}-{cid}"))
        k, v, exc, match = SPECIFIC[name]
        out.append(pytest.param(name, _set_group(**{k: v}), exc, r"param group 0: .*" + match,
                                id=f"{name}-{k} set to {v}"))
    return out


@pytest.mark.parametrize("name,setup,exc,match", _step_case_params())
def test_bad_step_changes_nothing(name, setup, exc, match):
    opt, params = _stepped_optimizer(name)
    grads = setup(opt, params)
    before = snapshot(opt, params)
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_same_snapshot(before, snapshot(opt, params))


@pytest.mark.parametrize("name,key,value,match", [
    pytest.param("Adam", "amsgrad", 0, r"amsgrad must be a bool", id="amsgrad=0 after False"),
    pytest.param("RMSprop", "centered", 0, r"centered must be a bool", id="centered=0 after False"),
    pytest.param("SGD", "maximize", 0, r"maximize must be a bool", id="maximize=0 after False"),
    pytest.param("Adagrad", "lr", True, r"lr must be a real number", id="lr=True after 1.0"),
])
def test_value_equal_to_the_previous_one_is_still_validated(name, key, value, match):
    """0 == False and True == 1.0 in Python: a step must not accept, between steps, a value
    that the constructor rejects just because it compares equal to the last valid one."""
    p = np.ones(3)
    opt = getattr(fusedoptim, name)([p], lr=1.0)
    opt.step([np.ones(3)])
    with pytest.raises(TypeError, match=match):
        getattr(fusedoptim, name)([np.ones(3)], **{"lr": 1.0, key: value})
    opt.param_groups[0][key] = value
    before = snapshot(opt, [p])
    with pytest.raises(TypeError, match=r"param group 0: " + match):
        opt.step([np.ones(3)])
    assert_same_snapshot(before, snapshot(opt, [p]))


@pytest.mark.parametrize("name", [n for n, _ in RICH_CASES])
def test_bad_second_group_stops_the_first(name):
    """Validation covers every group before the first one is updated."""
    a, b = np.ones(4), np.ones(3)
    opt = getattr(fusedoptim, name)([dict(params=[a]), dict(params=[b])])
    opt.step([np.ones(4), np.ones(3)])
    opt.param_groups[1]["lr"] = NAN
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="param group 1: lr"):
        opt.step([np.ones(4), np.ones(3)])
    assert_same_snapshot(before, snapshot(opt, [a, b]))


@pytest.mark.parametrize("name", [n for n, _ in RICH_CASES])
def test_bad_grad_for_a_fresh_param_creates_no_state(name):
    """The bad gradient is the last one, the earlier ones are good and one parameter has
    no state yet: nothing is updated and no state is created."""
    opt, params = _stepped_optimizer(name)
    assert params[2] not in opt.state
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"gradient of params\[2\]"):
        opt.step([np.ones(5), np.ones((4, 3)), np.ones(2)])
    assert params[2] not in opt.state
    assert_same_snapshot(before, snapshot(opt, params))


def test_nan_gradients_are_data():
    """Non-finite gradients are not bad *input*: they propagate (torch semantics)."""
    p = np.ones(3)
    opt = fusedoptim.SGD([p], lr=0.1)
    opt.step([np.array([NAN, INF, 1.0])])
    assert np.isnan(p[0]) and np.isneginf(p[1]) and p[2] == 0.9



def test_gradient_aliasing_another_parameter_is_rejected():
    """A gradient that is (a view of) another parameter would race with that
    parameter's update under threads: refused before anything is written."""
    a = np.ones(8, np.float32)
    b = np.full(16, 2.0, np.float32)
    opt = fusedoptim.SGD([a, b], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\].*another parameter"):
        opt.step([b[4:12], np.zeros(16, np.float32)])
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 2.0)
    big = np.zeros(16, np.float32)
    opt2 = fusedoptim.SGD([big[:8]], lr=0.1)
    opt2.step([big[8:]])                 # a neighbour in the same buffer that is no parameter: fine
    assert opt2.iterations == 1


# --------------------------------------------- issue 13's optimizers: out-of-range values
# (optimizer, hyperparameter, bad value, exception, message): one or more per optimizer;
# each at construction (the arrays untouched) and set between steps (params, state, groups
# and the step count bit-identical after the refused step).  The shared validators
# (fusedoptim.validate) name the parameter in every message.
RANGE_CASES = [
    ("Lamb", "betas", (0.9, 1.0), ValueError, r"beta parameter at index 1"),
    ("Lamb", "weight_decay", -1.0, ValueError, r"weight_decay value: -1.0"),
    ("Lamb", "eps", NAN, ValueError, r"epsilon value must be finite"),
    ("LARS", "momentum", -0.1, ValueError, r"momentum value: -0.1"),
    ("LARS", "dampening", 2.0, ValueError, r"dampening: 2.0 \(must be <= 1.0\)"),
    ("LARS", "trust_coefficient", -1.0, ValueError, r"trust_coefficient: -1.0"),
    ("NovoGrad", "betas", (1.0, 0.9), ValueError, r"beta parameter at index 0"),
    ("NovoGrad", "grad_averaging", 1, TypeError, r"grad_averaging must be a bool"),
    ("AdaBelief", "betas", (0.9, 1.5), ValueError, r"beta parameter at index 1"),
    ("AdaBelief", "eps", -1.0, ValueError, r"epsilon value: -1.0"),
    ("Yogi", "initial_accumulator", -1.0, ValueError, r"initial_accumulator: -1.0"),
    ("Yogi", "betas", (NAN, 0.9), ValueError, r"beta parameter at index 0"),
    ("Adan", "betas", (0.9, 0.9, 1.0), ValueError, r"beta parameter at index 2"),
    ("Adan", "weight_decay", INF, ValueError, r"weight_decay value must be finite"),
    ("Ftrl", "learning_rate_power", 0.5, ValueError, r"learning_rate_power: 0.5 \(must be <= 0.0\)"),
    ("Ftrl", "l1_regularization_strength", -1.0, ValueError, r"l1_regularization_strength: -1.0"),
    ("Ftrl", "beta", -1.0, ValueError, r"beta: -1.0"),
    ("ScheduleFreeAdamW", "warmup_steps", -1, ValueError, r"warmup_steps must be >= 0"),
    ("ScheduleFreeAdamW", "weight_lr_power", NAN, ValueError, r"weight_lr_power must be finite"),
    ("ScheduleFreeSGD", "momentum", 1.0, ValueError, r"momentum: 1.0 \(must be < 1.0\)"),
    ("ScheduleFreeSGD", "r", INF, ValueError, r"r must be finite"),
    ("ASGD", "lambd", -1e-4, ValueError, r"lambd: -0.0001"),
    ("ASGD", "t0", -1.0, ValueError, r"t0: -1.0"),
    ("Muon", "momentum", 1.5, ValueError, r"momentum must be <= 1"),
    ("Muon", "ns_steps", -1, ValueError, r"ns_steps must be >= 0"),
    ("Muon", "ns_coefficients", (1.0, 2.0), ValueError, r"ns_coefficients must be three numbers"),
    ("Muon", "adjust_lr_fn", "sqrt", ValueError, r"adjust_lr_fn must be None, 'original', 'match_rms_adamw' or 'width_transfer'"),
    ("LBFGS", "history_size", 0, ValueError, r"history_size must be >= 1"),
    ("LBFGS", "tolerance_grad", -1.0, ValueError, r"tolerance_grad: -1.0"),
    ("LBFGS", "line_search_fn", "wolfe", ValueError, r"line_search_fn must be None or 'strong_wolfe'"),
]


def _matrices():
    """Params every optimizer takes, Muon included: 2-D (one a view of a larger array)."""
    base = np.linspace(-1, 1, 30).reshape(5, 6)
    return [base[:, :3].copy(), np.linspace(0.5, 2, 12).reshape(4, 3)]


def _lbfgs_closure(params):
    g = [np.full_like(p, 0.5) for p in params]
    return lambda: (float(sum(np.sum(p * q) for p, q in zip(params, g))), g)


@pytest.mark.parametrize("name,key,value,exc,match", [pytest.param(*c, id=f"{c[0]}-{c[1]}={c[2]!r}")
                                                      for c in RANGE_CASES])
def test_out_of_range_hyperparameter_at_construction(name, key, value, exc, match):
    params = _matrices()
    copies = [p.copy() for p in params]
    with pytest.raises(exc, match=match):
        getattr(fusedoptim, name)(params, **{key: value})
    for p, c in zip(params, copies):
        assert np.array_equal(p, c)


@pytest.mark.parametrize("name,key,value,exc,match", [pytest.param(*c, id=f"{c[0]}-{c[1]}={c[2]!r}")
                                                      for c in RANGE_CASES])
def test_out_of_range_hyperparameter_between_steps_changes_nothing(name, key, value, exc, match):
    params = _matrices()
    opt = getattr(fusedoptim, name)(params)
    if name == "LBFGS":
        opt.step(_lbfgs_closure(params))
        before = ([p.copy() for p in params], opt.state_dict())
        opt.param_groups[0][key] = value
        with pytest.raises(exc, match=r"param group 0: .*" + match):
            opt.step(_lbfgs_closure(params))
        after = ([p.copy() for p in params], opt.state_dict())
        for a, b in zip(before[0], after[0]):
            assert np.array_equal(a, b)
        st0, st1 = before[1]["state"][0], after[1]["state"][0]
        assert sorted(st0) == sorted(st1)
        for k in st0:
            if isinstance(st0[k], np.ndarray):
                assert np.array_equal(st0[k], st1[k]), k
            elif isinstance(st0[k], list):
                assert all(np.array_equal(x, y) for x, y in zip(st0[k], st1[k])), k
            else:
                assert st0[k] == st1[k], k
        return
    grads = [np.full_like(p, 0.25) for p in params]
    opt.step(grads)
    opt.param_groups[0][key] = value
    before = snapshot(opt, params)
    with pytest.raises(exc, match=r"param group 0: .*" + match):
        opt.step(grads)
    assert_same_snapshot(before, snapshot(opt, params))


def test_muon_given_a_vector_in_add_param_group_changes_nothing():
    """Muon without a fallback for 1-D parameters (torch's rule): a bias given to it is
    refused, naming it, and the optimizer keeps what it had."""
    params = _matrices()
    opt = fusedoptim.Muon(params)
    opt.step([np.ones_like(p) for p in params])
    before = snapshot(opt, params)
    bias = np.zeros(3)
    with pytest.raises(ValueError, match=r"Muon only supports 2-D parameters, params\[0\] has shape \(3,\).*AdamW"):
        opt.add_param_group({"params": [bias]})
    assert len(opt.param_groups) == 1 and np.array_equal(bias, np.zeros(3))
    assert_same_snapshot(before, snapshot(opt, params))


def test_lbfgs_step_without_a_closure_changes_nothing():
    params = _matrices()
    opt = fusedoptim.LBFGS(params)
    opt.step(_lbfgs_closure(params))
    copies, sd = [p.copy() for p in params], opt.state_dict()
    for bad in (None, [np.ones((5, 3)), np.ones((4, 3))], 0.1):
        with pytest.raises(TypeError, match=r"LBFGS.step needs a closure"):
            opt.step(bad)
    assert all(np.array_equal(p, c) for p, c in zip(params, copies))
    assert opt.state_dict()["state"][0]["n_iter"] == sd["state"][0]["n_iter"]


@pytest.mark.parametrize("inner", [fusedoptim.SGD, "Adam", None, [np.zeros(3)]], ids=["class", "name", "None",
                                                                                      "params"])
def test_lookahead_around_a_non_optimizer(inner):
    with pytest.raises(TypeError, match=r"Lookahead wraps a fusedoptim optimizer .*got "):
        fusedoptim.Lookahead(inner)


def test_lookahead_around_lbfgs_is_refused():
    """LBFGS steps from a closure: Lookahead(LBFGS) would never see a gradient step."""
    with pytest.raises(TypeError, match=r"Lookahead wraps a fusedoptim optimizer .*got LBFGS"):
        fusedoptim.Lookahead(fusedoptim.LBFGS(_matrices()))


@pytest.mark.parametrize("kw,match", [({"k": 0}, r"k must be >= 1"), ({"alpha": 1.0}, r"alpha must be < 1"),
                                      ({"alpha": NAN}, r"alpha must be finite")])
def test_lookahead_bad_setting_changes_nothing(kw, match):
    params = _matrices()
    inner = fusedoptim.Adam(params)
    inner.step([np.ones_like(p) for p in params])
    before = snapshot(inner, params)
    with pytest.raises(ValueError, match=r"Lookahead: " + match):
        fusedoptim.Lookahead(inner, **kw)
    assert_same_snapshot(before, snapshot(inner, params))
