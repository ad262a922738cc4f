"""Learning-rate schedules: Keras-style formulas, torch-style schedulers against torch.

Keras/TensorFlow is not installed: each Keras-style schedule is checked against its
documented formula written out below (float64, one line per formula line).  The
torch-style schedulers are checked against ``torch.optim.lr_scheduler`` itself, step by
step and bit for bit (they use the same recursive updates, so the same roundings), over
300 steps: long enough to cross every milestone/restart/phase in the table's settings.
"""
import copy
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import schedules as S

STEPS = [0, 1, 2, 3, 5, 9, 10, 11, 19, 20, 21, 29, 30, 31, 49, 50, 51, 99, 100, 101, 150, 199, 200, 201,
         299, 300, 1000, 12345]


# ------------------------------------------------------------ reference formulas (Keras docs)
def ref_exponential(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate * decay_rate ** p


def ref_piecewise(step, boundaries, values):
    if step <= boundaries[0]:
        return values[0]
    for lo, hi, v in zip(boundaries[:-1], boundaries[1:], values[1:-1]):
        if lo < step <= hi:
            return v
    return values[-1]


def ref_polynomial(step, initial_learning_rate, decay_steps, end_learning_rate=1e-4, power=1.0, cycle=False):
    if cycle:
        decay_steps = decay_steps * (1.0 if step == 0 else math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return (initial_learning_rate - end_learning_rate) * (1 - step / decay_steps) ** power + end_learning_rate


def ref_inverse_time(step, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return initial_learning_rate / (1 + decay_rate * p)


def ref_cosine(step, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
    if warmup_target is None:
        peak, warmup_steps = initial_learning_rate, 0
    else:
        peak = warmup_target
    step = min(step, decay_steps + warmup_steps)
    if step < warmup_steps:
        return (warmup_target - initial_learning_rate) * (step / warmup_steps) + initial_learning_rate
    cosine_decay = 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / decay_steps))
    return peak * ((1 - alpha) * cosine_decay + alpha)


def ref_restarts(step, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    # walk the periods: period i lasts first_decay_steps * t_mul**i steps
    i, start, period = 0, 0.0, float(first_decay_steps)
    while step >= start + period:
        start, period, i = start + period, period * t_mul, i + 1
    f = (step - start) / period
    return initial_learning_rate * ((1 - alpha) * 0.5 * m_mul ** i * (1 + math.cos(math.pi * f)) + alpha)


def ref_warmup(step, warmup_steps, inner, start_value=0.0):
    if step < warmup_steps:
        return start_value + (inner(0) - start_value) * step / warmup_steps
    return inner(step - warmup_steps)


def ref_constant(step, value):
    return value


KERAS_CASES = [
    ("exp", S.ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9), ref_exponential),
    ("exp-stair", S.ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5, staircase=True),
     ref_exponential),
    ("exp-grow", S.ExponentialDecay, dict(initial_learning_rate=1e-4, decay_steps=100.0, decay_rate=1.01),
     ref_exponential),
    ("piecewise", S.PiecewiseConstantDecay, dict(boundaries=[10, 100, 200], values=[1.0, 0.5, 0.1, 0.01]),
     ref_piecewise),
    ("piecewise-1", S.PiecewiseConstantDecay, dict(boundaries=[0], values=[0.3, 0.2]), ref_piecewise),
    ("poly", S.PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=100), ref_polynomial),
    ("poly-sqrt", S.PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=100, end_learning_rate=0.01,
                                          power=0.5), ref_polynomial),
    ("poly-cycle", S.PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=30, end_learning_rate=0.0,
                                           power=2.0, cycle=True), ref_polynomial),
    ("inverse", S.InverseTimeDecay, dict(initial_learning_rate=0.1, decay_steps=1.0, decay_rate=0.5),
     ref_inverse_time),
    ("inverse-stair", S.InverseTimeDecay, dict(initial_learning_rate=0.1, decay_steps=20, decay_rate=2.0,
                                               staircase=True), ref_inverse_time),
    ("cosine", S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=200), ref_cosine),
    ("cosine-alpha", S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=50, alpha=0.1), ref_cosine),
    ("cosine-warmup", S.CosineDecay, dict(initial_learning_rate=0.0, decay_steps=100, warmup_target=0.1,
                                          warmup_steps=20), ref_cosine),
    ("cosine-warmup-from", S.CosineDecay, dict(initial_learning_rate=1e-3, decay_steps=100, alpha=0.05,
                                               warmup_target=1e-2, warmup_steps=11), ref_cosine),
    ("restarts", S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=10), ref_restarts),
    ("restarts-1", S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=20, t_mul=1.0,
                                               m_mul=0.5, alpha=0.01), ref_restarts),
    ("restarts-1.5", S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=1.5,
                                                 m_mul=0.9, alpha=0.1), ref_restarts),
    ("constant", S.Constant, dict(value=0.01), ref_constant),
]


@pytest.mark.parametrize("name,cls,kwargs,ref", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_keras_schedule_formula(name, cls, kwargs, ref):
    s = cls(**kwargs)
    for t in STEPS:
        got = s(t)
        assert type(got) is float
        assert got == pytest.approx(ref(t, **kwargs), rel=1e-12, abs=1e-16), f"step {t}"
    # numpy integer, float and 0-d array steps mean the same step
    assert s(np.int64(21)) == s(21.0) == s(np.array(21)) == s(21)


@pytest.mark.parametrize("name,cls,kwargs,ref", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_keras_schedule_pure_and_config(name, cls, kwargs, ref):
    s = cls(**kwargs)
    forward = [s(t) for t in STEPS]
    backward = [s(t) for t in reversed(STEPS)][::-1]
    assert forward == backward  # a pure function of the step: order and repetition don't matter
    cfg = s.get_config()
    assert cfg["class_name"] == cls.__name__
    cfg2 = json.loads(json.dumps(cfg, allow_nan=False))  # plain JSON
    for rebuilt in (cls.from_config(cfg2), S.from_config(cfg2), S.LearningRateSchedule.from_config(cfg2)):
        assert type(rebuilt) is cls and rebuilt == s and hash(rebuilt) == hash(s)
        assert [rebuilt(t) for t in STEPS] == forward
    assert eval(repr(s), vars(S)) == s


def test_keras_exact_boundaries():
    p = S.PiecewiseConstantDecay([100, 200], [1e-2, 1e-3, 1e-4])
    assert (p(99), p(100), p(101), p(200), p(201)) == (1e-2, 1e-2, 1e-3, 1e-3, 1e-4)
    e = S.ExponentialDecay(1.0, 10, 0.5, staircase=True)
    assert (e(9), e(10), e(19), e(20)) == (1.0, 0.5, 0.5, 0.25)
    c = S.CosineDecay(0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    assert (c(0), c(5), c(10), c(110), c(10**6)) == (0.0, 0.05, 0.1, 0.0, 0.0)
    assert S.CosineDecay(0.1, 100, alpha=0.1)(100) == pytest.approx(0.01, rel=1e-15)
    pd = S.PolynomialDecay(0.1, 100, end_learning_rate=0.01)
    assert pd(100) == pd(5000) == 0.01
    pc = S.PolynomialDecay(0.1, 10, end_learning_rate=0.0, cycle=True)
    assert pc(0) == 0.1 and pc(10) == 0.0 and pc(11) == pytest.approx(0.1 * 9 / 20, rel=1e-15)


@pytest.mark.parametrize("first,t_mul,m_mul", [(10, 2.0, 1.0), (10, 3.0, 0.5), (16, 1.5, 0.9), (1000, 1.1, 1.0),
                                             (625, 1.2, 0.7), (10, 1.0, 0.8)])
def test_restarts_happen_exactly_at_the_restart_step(first, t_mul, m_mul):
    # Keras' closed form floor(log(1 - f (1 - t_mul)) / log(t_mul)) misrounds at some
    # restarts in double (t_mul=3: step 1210 -> index 4, f=1.0, lr=alpha); we correct it.
    s = S.CosineDecayRestarts(1.0, first_decay_steps=first, t_mul=t_mul, m_mul=m_mul)
    start, period = Fraction(0), Fraction(first)
    checked = 0
    for i in range(12):
        if start.denominator == 1:  # a restart at an integer step: the lr is exactly the new peak
            assert s(int(start)) == pytest.approx(m_mul ** i, rel=1e-12), f"restart {i} at step {start}"
            assert i == 0 or s(int(start) - 1) < s(int(start))
            checked += 1
        assert s(float(start + period / 2)) == pytest.approx(0.5 * m_mul ** i, rel=1e-9)
        start, period = start + period, period * Fraction(t_mul).limit_denominator(100)
    assert checked >= 4
    if t_mul == 3.0:
        assert s(1210) == pytest.approx(m_mul ** 5, rel=1e-12)


def test_linear_warmup_composition():
    inner = S.CosineDecay(0.1, decay_steps=100, alpha=0.05)
    w = S.LinearWarmup(20, inner, start_value=1e-3)
    keras = S.CosineDecay(1e-3, decay_steps=100, alpha=0.05, warmup_target=0.1, warmup_steps=20)
    for t in STEPS:
        assert w(t) == keras(t) == pytest.approx(ref_warmup(t, 20, inner, 1e-3), rel=1e-14)
    # warmup then a constant, then a nested warmup of a piecewise schedule
    c = S.LinearWarmup(10, 0.5)
    assert [c(t) for t in (0, 5, 10, 1000)] == [0.0, 0.25, 0.5, 0.5]
    pw = S.PiecewiseConstantDecay([50], [1.0, 0.1])
    nested = S.LinearWarmup(4, S.LinearWarmup(6, pw, start_value=0.5), start_value=0.1)
    for t in range(0, 80):
        assert nested(t) == pytest.approx(ref_warmup(t, 4, lambda u: ref_warmup(u, 6, pw, 0.5), 0.1), rel=1e-14)
    assert S.LinearWarmup(0, pw)(3) == 1.0
    # nested configs are nested plain dicts and round-trip
    cfg = nested.get_config()
    assert cfg["schedule_or_value"]["class_name"] == "LinearWarmup"
    assert cfg["schedule_or_value"]["schedule_or_value"] == pw.get_config()
    assert S.from_config(json.loads(json.dumps(cfg))) == nested


def test_from_config_accepts_keras_configs():
    # what keras' get_config() and keras.optimizers.schedules.serialize() produce
    keras_cfg = {"initial_learning_rate": 0.1, "decay_steps": 1000, "alpha": 0.0, "name": "CosineDecay",
                 "warmup_target": None, "warmup_steps": 0}
    s = S.CosineDecay.from_config(keras_cfg)
    assert s == S.CosineDecay(0.1, 1000, name="CosineDecay") and s.get_config()["name"] == "CosineDecay"
    ser = {"module": "keras.optimizers.schedules", "class_name": "PolynomialDecay", "registered_name": None,
           "config": {"cycle": False, "decay_steps": 10000, "end_learning_rate": 0.01,
                      "initial_learning_rate": 0.1, "name": None, "power": 0.5}}
    assert S.from_config(ser) == S.PolynomialDecay(0.1, 10000, 0.01, power=0.5)


def test_from_config_errors():
    with pytest.raises(ValueError, match="unknown schedule class 'Nope'"):
        S.from_config({"class_name": "Nope"})
    with pytest.raises(ValueError, match="no 'class_name'"):
        S.from_config({"value": 1.0})
    with pytest.raises(ValueError, match="config is for a Constant, not a CosineDecay"):
        S.CosineDecay.from_config(S.Constant(0.1).get_config())
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['bogus'\]"):
        S.from_config({"class_name": "Constant", "value": 0.1, "bogus": 1})
    with pytest.raises(ValueError, match="decay_steps must be > 0"):
        S.from_config({"class_name": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 0})
    with pytest.raises(TypeError, match="config must be a dict"):
        S.from_config("CosineDecay")
    with pytest.raises(TypeError, match="only LearningRateSchedule objects have a config"):
        S.LinearWarmup(5, lambda step: 0.1).get_config()


def test_custom_schedule_subclass_registers_and_round_trips():
    class HalvingEvery(S.LearningRateSchedule):
        _fields = ("lr", "every")

        def __init__(self, lr, every):
            self.lr, self.every = lr, every

        def __call__(self, step):
            return self.lr * 0.5 ** (step // self.every)

    s = HalvingEvery(0.4, 3)
    assert S.from_config(s.get_config()) == s and s(6) == 0.1

    class NoConfig(S.LearningRateSchedule):
        def __call__(self, step):
            return 0.1

    with pytest.raises(NotImplementedError, match="get_config"):
        NoConfig().get_config()
    assert S.from_config(S.Constant(0.2).get_config()) == S.Constant(0.2)  # built-ins aren't shadowed

    class Constant(S.LearningRateSchedule):  # same name as a built-in
        _fields = ("value",)

        def __init__(self, value):
            self.value = value

    assert type(S.from_config({"class_name": "Constant", "value": 0.2})) is S.Constant


BAD_KERAS = [
    (S.ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.9), ValueError,
     r"decay_steps must be > 0, got decay_steps=0"),
    (S.ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-0.5), ValueError,
     r"decay_rate must be >= 0, got decay_rate=-0.5"),
    (S.ExponentialDecay, dict(initial_learning_rate=-0.1, decay_steps=10, decay_rate=0.5), ValueError,
     r"initial_learning_rate must be >= 0"),
    (S.ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5, staircase=1), TypeError,
     r"staircase must be a bool"),
    (S.ExponentialDecay, dict(initial_learning_rate="0.1", decay_steps=10, decay_rate=0.5), TypeError,
     r"initial_learning_rate must be a real number, got initial_learning_rate='0.1'"),
    (S.ExponentialDecay, dict(initial_learning_rate=float("nan"), decay_steps=10, decay_rate=0.5), ValueError,
     r"initial_learning_rate must be finite"),
    (S.PiecewiseConstantDecay, dict(boundaries=[10, 20], values=[1.0, 0.5]), ValueError,
     r"values needs one more entry than boundaries"),
    (S.PiecewiseConstantDecay, dict(boundaries=[20, 10], values=[1.0, 0.5, 0.1]), ValueError,
     r"boundaries must be strictly increasing"),
    (S.PiecewiseConstantDecay, dict(boundaries=[10], values=[1.0, -0.5]), ValueError, r"values\[1\] must be >= 0"),
    (S.PiecewiseConstantDecay, dict(boundaries=10, values=[1.0, 0.5]), TypeError, r"must be lists"),
    (S.PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=-1), ValueError, r"decay_steps=-1"),
    (S.PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=10, power=-1.0), ValueError,
     r"power must be >= 0, got power=-1.0"),
    (S.InverseTimeDecay, dict(initial_learning_rate=0.1, decay_steps=0.0, decay_rate=1.0), ValueError,
     r"decay_steps=0.0"),
    (S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=0), ValueError, r"decay_steps must be > 0"),
    (S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=1.5), ValueError,
     r"alpha must be <= 1, got alpha=1.5"),
    (S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, warmup_steps=5), ValueError,
     r"warmup_steps has no effect without warmup_target"),
    (S.CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=0.2, warmup_steps=-1), ValueError,
     r"warmup_steps must be >= 0"),
    (S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=0), ValueError,
     r"first_decay_steps must be > 0, got first_decay_steps=0"),
    (S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=0.5), ValueError,
     r"t_mul must be >= 1, got t_mul=0.5"),
    (S.CosineDecayRestarts, dict(initial_learning_rate=0.1, first_decay_steps=10, m_mul=-1.0), ValueError,
     r"m_mul must be >= 0"),
    (S.LinearWarmup, dict(warmup_steps=-5, schedule_or_value=0.1), ValueError, r"warmup_steps must be >= 0"),
    (S.LinearWarmup, dict(warmup_steps=5, schedule_or_value="fast"), TypeError, r"schedule_or_value must be a real"),
    (S.LinearWarmup, dict(warmup_steps=5, schedule_or_value=0.1, start_value=-1.0), ValueError, r"start_value"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=0), ValueError, r"total_steps must be >= 1, got total_steps=0"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=10.5), TypeError, r"total_steps must be an integer"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=100, pct_start=1.5), ValueError, r"pct_start must be <= 1"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=100, anneal_strategy="exp"), ValueError, r"anneal_strategy"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=100, div_factor=0), ValueError, r"div_factor must be > 0"),
    (S.OneCycle, dict(max_lr=0.1, total_steps=10, pct_start=0.1), ValueError, r"zero length"),
    (S.Constant, dict(value=-1.0), ValueError, r"value must be >= 0, got value=-1.0"),
    (S.Constant, dict(value=None), TypeError, r"value must be a real number"),
]


@pytest.mark.parametrize("cls,kwargs,exc,match", BAD_KERAS,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_rest) in enumerate(BAD_KERAS)])
def test_keras_schedule_validates_eagerly(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("step,exc", [(-1, ValueError), (float("inf"), ValueError), (None, TypeError),
                                      ("3", TypeError), (np.array([1, 2]), TypeError)])
def test_schedule_rejects_bad_steps(step, exc):
    with pytest.raises(exc, match="schedule step"):
        S.CosineDecay(0.1, 10)(step)


# ----------------------------------------------------------------- OneCycle vs torch
@pytest.mark.parametrize("max_lr,total,kw", [
    (0.1, 100, {}),
    (0.01, 57, {"anneal_strategy": "linear"}),
    (1.0, 250, {"three_phase": True, "pct_start": 0.25}),
    (0.3, 33, {"div_factor": 10.0, "final_div_factor": 100.0, "pct_start": 0.5}),
    (0.05, 3, {"pct_start": 0.2}),  # first phase shorter than a step: starts in phase 2, as torch
], ids=["default", "linear", "three-phase", "factors", "tiny"])
def test_one_cycle_matches_torch(max_lr, total, kw):
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=1.0)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr, total_steps=total, cycle_momentum=False, **kw)
    s = S.OneCycle(max_lr, total, **kw)
    for t in range(total):
        assert s(t) == tsched.get_last_lr()[0], f"step {t}"
        topt.step()
        tsched.step()
    last = s(total - 1)
    assert s(total) == s(10 * total) == last  # holds the final lr after the cycle


# ===================================================================== torch style
def _groups_ours(opt_cls):
    W, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    return opt_cls([{"params": [W]}, {"params": [b], "lr": 0.05}], lr=0.1, **_opt_kw(opt_cls))


def _opt_kw(opt_cls):
    return {"momentum": 0.9} if opt_cls.__name__ == "SGD" else {}


def _groups_torch(opt_name):
    import torch
    ps = [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)]
    cls = getattr(torch.optim, opt_name)
    kw = {"momentum": 0.9} if opt_name == "SGD" else {}
    return cls([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], lr=0.1, **kw)


class Halver:
    """A callable object with state, for LambdaLR's state_dict (torch saves its __dict__)."""

    def __init__(self, every):
        self.every = every

    def __call__(self, epoch):
        return 0.5 ** (epoch // self.every)


# (id, optimizer, builder(lib, opt)) -- lib is fusedoptim.schedules or torch.optim.lr_scheduler,
# which take the same arguments
TORCH_CASES = [
    ("LambdaLR", "SGD", lambda L, o: L.LambdaLR(o, lambda e: 0.99 ** e)),
    ("LambdaLR-list", "SGD", lambda L, o: L.LambdaLR(o, [lambda e: 1.0 / (1 + e), Halver(25)])),
    ("StepLR", "SGD", lambda L, o: L.StepLR(o, step_size=7, gamma=0.5)),
    ("MultiStepLR", "SGD", lambda L, o: L.MultiStepLR(o, milestones=[3, 10, 10, 50], gamma=0.3)),
    ("ConstantLR", "SGD", lambda L, o: L.ConstantLR(o, factor=0.5, total_iters=10)),
    ("ExponentialLR", "SGD", lambda L, o: L.ExponentialLR(o, gamma=0.97)),
    ("CosineAnnealingLR", "SGD", lambda L, o: L.CosineAnnealingLR(o, T_max=40, eta_min=1e-3)),
    ("CosineAnnealingWarmRestarts", "SGD", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2,
                                                                                       eta_min=1e-4)),
    ("CAWR-mult1", "SGD", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=17)),
    ("PolynomialLR", "SGD", lambda L, o: L.PolynomialLR(o, total_iters=100, power=2.0)),
    ("LinearLR", "SGD", lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=20)),
    ("LinearLR-decay", "SGD", lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=150)),
    ("OneCycleLR-SGD", "SGD", lambda L, o: L.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=300)),
    ("OneCycleLR-Adam", "Adam", lambda L, o: L.OneCycleLR(o, max_lr=0.01, epochs=10, steps_per_epoch=30,
                                                          three_phase=True, anneal_strategy="linear")),
    ("OneCycleLR-nomom", "Adagrad", lambda L, o: L.OneCycleLR(o, max_lr=0.01, total_steps=300,
                                                              cycle_momentum=False)),
    ("SequentialLR", "SGD", lambda L, o: L.SequentialLR(o, [L.LinearLR(o, 0.01, 1.0, 10),
                                                            L.CosineAnnealingLR(o, 100)], milestones=[10])),
    ("SequentialLR-3", "SGD", lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.1, 5), L.ExponentialLR(o, 0.9),
                                                              L.StepLR(o, 10, 0.5)], milestones=[20, 50])),
    # torch's nested SequentialLR works only as the first scheduler (a later one gets
    # _update_lr(0), which has no get_lr); its double initial step is mirrored too
    ("SequentialLR-nested", "Adam", lambda L, o: L.SequentialLR(
        o, [L.SequentialLR(o, [L.ExponentialLR(o, 0.95), L.MultiStepLR(o, [30, 60])], milestones=[40]),
            L.LinearLR(o, 0.2, 1.0, 5)], milestones=[70])),
]


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _momenta(opt):
    return [(g.get("momentum"), tuple(g["betas"]) if "betas" in g else None) for g in opt.param_groups]


@pytest.mark.parametrize("name,opt_name,build", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_torch_style_matches_torch(name, opt_name, build):
    torch = pytest.importorskip("torch")
    o = _groups_ours(getattr(fo, opt_name))
    t = _groups_torch(opt_name)
    ours = build(S, o)
    with warnings.catch_warnings():  # torch warns about the nested SequentialLR's double initial step
        warnings.simplefilter("ignore", UserWarning)
        theirs = build(torch.optim.lr_scheduler, t)
    for g, tg in zip(o.param_groups, t.param_groups):
        assert g["initial_lr"] == tg["initial_lr"]
    assert ours.base_lrs == getattr(theirs, "base_lrs", ours.base_lrs)
    for step in range(300):
        assert ours.get_last_lr() == theirs.get_last_lr(), f"step {step}"
        assert _lrs(o) == _lrs(t) and all(type(x) is float for x in _lrs(o))
        assert _momenta(o) == _momenta(t)
        assert ours.last_epoch == theirs.last_epoch
        t.step()  # (no gradients: only keeps torch from warning about the call order)
        ours.step()
        theirs.step()


def test_cosine_warm_restarts_fractional_epochs_match_torch():
    torch = pytest.importorskip("torch")
    o, t = _groups_ours(fo.SGD), _groups_torch("SGD")
    ours = S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=1e-3)
    theirs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(t, T_0=5, T_mult=2, eta_min=1e-3)
    iters = 7
    for epoch in range(40):
        for i in range(iters):
            ours.step(epoch + i / iters)
            theirs.step(epoch + i / iters)
            assert ours.get_last_lr() == theirs.get_last_lr() and ours.T_i == theirs.T_i
    ours.step(3)
    theirs.step(3)
    assert ours.get_last_lr() == theirs.get_last_lr()


def _metrics(n):
    # a noisy loss with plateaus: improvements, ties, small and large regressions
    return [round(1.0 / (1 + t // 25) + 0.01 * ((t * 7919) % 13) - 0.003 * (t % 4), 6) for t in range(n)]


PLATEAU_CASES = [
    dict(),
    dict(mode="max", factor=0.5, patience=3, threshold=0.01, threshold_mode="abs", cooldown=2),
    dict(mode="min", factor=0.3, patience=0, cooldown=5, min_lr=[1e-3, 1e-4], eps=1e-12),
    dict(mode="min", factor=0.9, patience=2, threshold=0.0, threshold_mode="abs", min_lr=0.04),
]


@pytest.mark.parametrize("kw", PLATEAU_CASES, ids=["default", "max-abs-cooldown", "per-group-min", "floor"])
def test_reduce_on_plateau_matches_torch(kw):
    torch = pytest.importorskip("torch")
    o, t = _groups_ours(fo.SGD), _groups_torch("SGD")
    ours = S.ReduceLROnPlateau(o, **kw)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(t, **kw)
    metrics = _metrics(300)
    if kw.get("mode") == "max":
        metrics = [-m for m in metrics]
    changes = 0
    for m in metrics:
        before = _lrs(o)
        ours.step(m)
        theirs.step(m)
        changes += _lrs(o) != before
        assert _lrs(o) == _lrs(t) and ours.get_last_lr() == theirs.get_last_lr()
        assert (ours.best, ours.num_bad_epochs, ours.cooldown_counter, ours.last_epoch) == \
               (theirs.best, theirs.num_bad_epochs, theirs.cooldown_counter, theirs.last_epoch)
    assert changes >= 2  # the metric sequence really exercises the reductions


ALL_CASES = TORCH_CASES + [("ReduceLROnPlateau", "SGD",
                            lambda L, o: L.ReduceLROnPlateau(o, factor=0.5, patience=2, cooldown=1))]


def _advance(sched, opt, n, start=0):
    metrics = _metrics(start + n)
    for k in range(start, start + n):
        if isinstance(sched, S.ReduceLROnPlateau):
            sched.step(metrics[k])
        else:
            sched.step()


@pytest.mark.parametrize("name,opt_name,build", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_scheduler_state_dict_round_trip(name, opt_name, build):
    # 37 steps, save, rebuild from scratch, load, 60 more == 97 uninterrupted (bit for bit)
    o1 = _groups_ours(getattr(fo, opt_name))
    s1 = build(S, o1)
    _advance(s1, o1, 37)
    sd = s1.state_dict()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in o1.param_groups]
    # the state is plain data: JSON can hold it (Python's JSON spells ReduceLROnPlateau's inf "Infinity")
    sd_json = json.loads(json.dumps(sd))
    o2 = _groups_ours(getattr(fo, opt_name))
    s2 = build(S, o2)
    for g, saved in zip(o2.param_groups, groups):
        g.update(copy.deepcopy(saved))
    s2.load_state_dict(sd_json)
    assert s2.state_dict() == sd
    _advance(s1, o1, 60, start=37)
    _advance(s2, o2, 60, start=37)
    assert s2.get_last_lr() == s1.get_last_lr() and _lrs(o2) == _lrs(o1) and _momenta(o2) == _momenta(o1)
    assert s2.last_epoch == s1.last_epoch


def test_lambda_lr_state_dict_keeps_callable_objects_state():
    o = _groups_ours(fo.SGD)
    h = Halver(10)
    s = S.LambdaLR(o, [lambda e: 1.0, h])
    sd = s.state_dict()
    assert sd["lr_lambdas"] == [None, {"every": 10}]
    h.every = 3
    s.load_state_dict(sd)
    assert h.every == 10
    assert S.LambdaLR(o, S.ExponentialDecay(1.0, 10, 0.5)).state_dict()["lr_lambdas"] == [None, None]


def test_torch_state_dict_loads_into_ours():
    torch = pytest.importorskip("torch")
    t = _groups_torch("SGD")
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(t, T_max=30, eta_min=1e-3)
    o = _groups_ours(fo.SGD)
    ours = S.CosineAnnealingLR(o, T_max=30, eta_min=1e-3)
    for _ in range(12):
        t.step()
        theirs.step()
    for g, tg in zip(o.param_groups, t.param_groups):
        g["lr"] = tg["lr"]
    ours.load_state_dict(theirs.state_dict())  # torch-only keys (_is_initial, ...) are ignored
    for _ in range(40):
        t.step()
        theirs.step()
        ours.step()
        assert ours.get_last_lr() == theirs.get_last_lr()


def test_scheduler_load_state_dict_validates_before_changing():
    o = _groups_ours(fo.SGD)
    s = S.StepLR(o, step_size=5, gamma=0.5)
    _advance(s, o, 7)
    good = s.state_dict()
    bad_cases = [
        ({k: v for k, v in good.items() if k != "gamma"}, ValueError, r"missing keys \['gamma'\]"),
        (dict(good, T_max=3), ValueError, r"unexpected keys \['T_max'\]"),
        (dict(good, step_size=0), ValueError, r"step_size must be >= 1"),
        (dict(good, step_size="5"), TypeError, r"state_dict\['step_size'\] must be like"),
        (dict(good, base_lrs=[0.1]), ValueError, r"base_lrs'\] has 1 entries, the optimizer has 2"),
        (dict(good, base_lrs=[0.1, "x"]), TypeError, r"must be like|must be a real"),
        (dict(good, last_epoch=2.5), TypeError, r"last_epoch'\] must be an integer"),
        (dict(good, gamma=object()), TypeError, r"must be like"),
        ("nope", TypeError, r"expected a dict"),
    ]
    snapshot = (s.state_dict(), _lrs(o))
    for sd, exc, match in bad_cases:
        with pytest.raises(exc, match=match):
            s.load_state_dict(sd)
        assert (s.state_dict(), _lrs(o)) == snapshot
    seq = S.SequentialLR(o, [S.ConstantLR(o, 0.5, 3), S.ExponentialLR(o, 0.9)], milestones=[3])
    sd = seq.state_dict()
    with pytest.raises(ValueError, match=r"_schedulers"):
        seq.load_state_dict(dict(sd, _schedulers=sd["_schedulers"][:1]))
    broken = copy.deepcopy(sd)
    broken["_schedulers"][1]["gamma"] = -1.0
    with pytest.raises(ValueError, match=r"gamma must be >= 0"):
        seq.load_state_dict(broken)
    assert seq.state_dict() == sd


BAD_SCHEDULERS = [
    (lambda o: S.StepLR(o, step_size=0), ValueError, r"step_size must be >= 1, got step_size=0"),
    (lambda o: S.StepLR(o, step_size=2.5), TypeError, r"step_size must be an integer"),
    (lambda o: S.StepLR(o, 3, gamma=-0.1), ValueError, r"gamma must be >= 0"),
    (lambda o: S.MultiStepLR(o, [3, -1]), ValueError, r"milestones\[1\] must be >= 0"),
    (lambda o: S.LinearLR(o, start_factor=0.0), ValueError, r"start_factor must be > 0"),
    (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, r"end_factor must be <= 1"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, r"total_iters must be >= 1"),
    (lambda o: S.ConstantLR(o, factor=2.0), ValueError, r"factor must be <= 1"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), ValueError, r"T_max must be >= 1"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, r"T_0 must be >= 1"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=1.5), TypeError, r"T_mult must be an integer"),
    (lambda o: S.PolynomialLR(o, total_iters=10, power=-1), ValueError, r"power must be >= 0"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1), ValueError, r"either total_steps OR \(epochs AND steps_per_epoch\)"),
    (lambda o: S.OneCycleLR(o, max_lr=[0.1], total_steps=10), ValueError, r"max_lr must have the same length"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=100, anneal_strategy="exp"), ValueError, r"anneal_strategy"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, r"factor must be < 1"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), ValueError, r"mode must be 'min' or 'max'"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError, r"threshold_mode"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, r"min_lr must have the same length"),
    (lambda o: S.ReduceLROnPlateau(o, patience=-1), ValueError, r"patience must be >= 0"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0]), ValueError, r"Expected 2 lr_lambdas, but got 1"),
    (lambda o: S.LambdaLR(o, 0.5), TypeError, r"lr_lambda\[0\] must be callable"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 3)], milestones=[5]), ValueError, r"one more than the number"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 3), S.ReduceLROnPlateau(o)], milestones=[5]), ValueError,
     r"does not support `ReduceLROnPlateau`"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 3), S.StepLR(_groups_ours(fo.SGD), 3)], milestones=[5]), ValueError,
     r"same optimizer"),
    (lambda o: S.StepLR(o, 3, last_epoch=4), KeyError, r"initial_lr"),
    (lambda o: S.StepLR(object(), 3), TypeError, r"is not an optimizer"),
]


@pytest.mark.parametrize("build,exc,match", BAD_SCHEDULERS, ids=[f"bad-{i}" for i in range(len(BAD_SCHEDULERS))])
def test_scheduler_validates_eagerly(build, exc, match):
    with pytest.raises(exc, match=match):
        build(_groups_ours(fo.SGD))


def test_one_cycle_needs_momentum_or_betas():
    o = _groups_ours(fo.Adagrad)
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        S.OneCycleLR(o, max_lr=0.1, total_steps=10)
    s = S.OneCycleLR(o, 0.1, 10, cycle_momentum=False)
    for _ in range(10):
        s.step()
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        s.step()


def test_scheduler_refuses_a_schedule_as_lr():
    W = np.zeros(3)
    o = fo.SGD([W], lr=S.CosineDecay(0.1, 100))
    with pytest.raises(TypeError, match="has a schedule as lr"):
        S.StepLR(o, 10)


def test_initial_lr_and_resume_with_last_epoch():
    o = _groups_ours(fo.SGD)
    s = S.ExponentialLR(o, 0.5)
    assert [g["initial_lr"] for g in o.param_groups] == [0.1, 0.05] == s.base_lrs
    s.step()
    s.step()
    # a second scheduler resumes from the group's initial_lr (torch semantics)
    s2 = S.ExponentialLR(o, 0.5, last_epoch=s.last_epoch)
    assert s2.base_lrs == [0.1, 0.05] and _lrs(o) == [0.025, 0.0125]
    lam = S.LambdaLR(o, lambda e: 1.0)
    o.add_param_group({"params": [np.zeros(1, np.float32)], "lr": 1.0})
    with pytest.raises(ValueError, match="add_param_group"):
        lam.step()


# ------------------------------------------------------------- schedules driving a real optimizer
def _train_deltas(opt, p, g, n, after_step=None):
    deltas = []
    for _ in range(n):
        p[...] = 0.0  # each step from 0: the new param is exactly the update
        opt.step([g])
        deltas.append(p.copy())
        if after_step is not None:
            after_step()
    return deltas


@pytest.mark.parametrize("sched", [
    S.PiecewiseConstantDecay([3, 7], [0.5, 0.25, 0.125]),
    S.CosineDecay(0.0, decay_steps=20, warmup_target=0.3, warmup_steps=5),
    S.LinearWarmup(4, S.ExponentialDecay(0.2, 3, 0.5, staircase=True)),
    S.OneCycle(0.4, total_steps=25),
], ids=["piecewise", "cosine-warmup", "warmup-exp", "onecycle"])
def test_optimizer_uses_schedule_at_each_iteration(sched):
    p = np.zeros(5)
    g = np.array([1.0, -2.0, 0.5, 3.0, -0.25])
    opt = fo.SGD([p], lr=sched)
    deltas = _train_deltas(opt, p, g, 30)
    for t, d in enumerate(deltas):
        np.testing.assert_allclose(d, -sched(t) * g, rtol=1e-15, atol=0, err_msg=f"iteration {t}")
    assert opt.iterations == 30


def test_optimizer_with_torch_style_scheduler_matches_torch_training():
    torch = pytest.importorskip("torch")
    g = np.array([1.0, -2.0, 0.5, 3.0, -0.25])
    p = np.zeros(5)
    opt = fo.SGD([p], lr=0.2, momentum=0.9)
    tp = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.2, momentum=0.9)
    ours = S.SequentialLR(opt, [S.LinearLR(opt, 0.1, 1.0, 5), S.CosineAnnealingLR(opt, 30)], milestones=[5])
    theirs = torch.optim.lr_scheduler.SequentialLR(
        topt, [torch.optim.lr_scheduler.LinearLR(topt, 0.1, 1.0, 5),
               torch.optim.lr_scheduler.CosineAnnealingLR(topt, 30)], milestones=[5])
    for t in range(35):
        lr = opt.param_groups[0]["lr"]
        before = p.copy()
        opt.step([g])
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-13, atol=1e-15)
        if t == 0:  # first step: momentum buffer = g, so the update is -lr * g
            np.testing.assert_allclose(p - before, -lr * g, rtol=1e-14)
        ours.step()
        theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr()


def test_optimizer_state_dict_keeps_schedule():
    p = np.zeros(2)
    sched = S.CosineDecay(0.1, 10)
    opt = fo.Adam([p], lr=sched)
    opt.step([np.ones(2)])
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] is sched
    opt2 = fo.Adam([np.zeros(2)], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == sched and opt2.iterations == 1


def test_optimizer_state_dict_round_trip_with_scheduler_keys():
    o = _groups_ours(fo.SGD)
    S.OneCycleLR(o, max_lr=0.5, total_steps=20)
    o2 = _groups_ours(fo.SGD)
    o2.load_state_dict(o.state_dict())
    assert [g["initial_lr"] for g in o2.param_groups] == [0.02, 0.02]


def test_no_warnings_from_schedulers():
    o = _groups_ours(fo.SGD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = S.CosineAnnealingLR(o, 10)
        for _ in range(25):
            s.step()
