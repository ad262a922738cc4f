"""One spec per algorithm: the Python classes and the native list agree, and the native
side checks what it is given (scalars by name, the buffer count for the flags).

The native half of a spec is rules.h's FO_ALGOS with each algorithm's
FO_<ALGO>_SCALARS/_FLAGS/_BUFFERS, exported by the extension as
``_kernels.ALGORITHMS``; the Python half is each class's ``AlgoSpec``, checked against it
when fusedoptim is imported.  These tests prove that check bites and that nothing is
passed by position.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fusedoptim
from fusedoptim import _kernels
from fusedoptim._spec import AlgoSpec
from cases import OPTIMIZERS, build, draw_hparams, CASES

CLASSES = {name: getattr(fusedoptim, name) for name in OPTIMIZERS}


def test_every_native_algorithm_has_a_class_and_specs_match():
    """Each class's spec is the native one, field by field; every native algorithm is
    used by some class."""
    used = set()
    # the classes of the case table, and those with a reduction stage (tests/test_families_reduce.py)
    reducing = {name: getattr(fusedoptim, name) for name in ("Lamb", "LARS", "NovoGrad")}
    for name, cls in {**CLASSES, **reducing}.items():
        spec = cls.spec
        native = _kernels.ALGORITHMS[spec.name]
        assert (spec.id, spec.scalars, spec.flags, spec.buffers, spec.stats, spec.tensor_state) == \
            (native.id, native.scalars, native.flags, native.buffers, native.stats, native.tensor_state), name
        assert tuple(cls.buffers) == native.buffers, name
        used.add(spec.name)
    assert used == set(_kernels.ALGORITHMS)
    assert _kernels.COMMON_SCALARS == ("gscale", "weight_decay", "l1", "ema_weight", "clip_value")


@pytest.mark.parametrize("field,value", [
    ("scalars", ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2_sqrt", "neg_step", "eps")),
    ("scalars", ("decay", "one_minus_beta1", "beta2", "one_minus_beta2", "bc2_sqrt", "eps")),
    ("flags", ()),
    ("buffers", ("exp_avg", "exp_avg_sq")),
])
def test_a_spec_that_differs_from_the_extension_fails_at_import(field, value):
    """Reordered, missing or extra names fail when the class is defined (at import for the
    built-ins), naming the field and both sides."""
    kw = dict(scalars=CLASSES["Adam"].spec.scalars, flags=("amsgrad",),
              buffers=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    kw[field] = value
    with pytest.raises(ImportError, match=rf"spec of 'adam' does not match the extension.*{field}: Python"):
        AlgoSpec("adam", **kw)
    with pytest.raises(ImportError, match="has no algorithm 'adamw'"):
        AlgoSpec("adamw", scalars=(), buffers=())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_kernel_scalars_and_flags_are_exactly_the_spec_names(name):
    """What each class returns per step is the spec, by name (the extension would refuse
    a missing or an extra name; this names the class that broke it)."""
    for n, kw in CASES:
        if n != name:
            continue
        opt = build(name, [np.zeros(3)], **draw_hparams(name, kw, 5))
        g = dict(opt.param_groups[0])
        flags = opt.kernel_flags(g)
        assert tuple(flags) == opt.spec.flags or set(flags) == set(opt.spec.flags)
        scalars = opt.kernel_scalars(g, opt.init_scalars(g), frozenset())
        assert set(scalars) == set(opt.spec.scalars), (name, kw)
        assert all(isinstance(v, (int, float)) for v in scalars.values())
        common = opt.common_scalars(g)
        assert tuple(common) == _kernels.COMMON_SCALARS


def _adam_call():
    opt = fusedoptim.Adam([np.zeros(4)], lr=0.1)
    g = dict(opt.param_groups[0])
    common, scalars = opt.common_scalars(g), opt.kernel_scalars(g, opt.init_scalars(g), frozenset())
    arrays = [np.ones(4)], [np.full(4, 0.5)], [[np.zeros(4)], [np.zeros(4)]]
    return common, scalars, arrays


def test_native_step_packs_by_name_not_by_position():
    """Reordering the dict changes nothing; the result equals the written-out formula."""
    common, scalars, (p, g, st) = _adam_call()
    _kernels.fused_step(_kernels.ALGORITHMS["adam"].id, dict(reversed(list(common.items()))),
                        dict(reversed(list(scalars.items()))), 0, p, g, st)
    m, v = 0.1 * 0.5, 0.001 * 0.25
    want = 1.0 - 0.1 / 0.1 * m / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)
    np.testing.assert_allclose(p[0], want, rtol=1e-14)
    np.testing.assert_allclose(st[0][0], m, rtol=1e-15)


@pytest.mark.parametrize("change,match", [
    (lambda c, s: (c, {k: v for k, v in s.items() if k != "eps"}), r"adam: the scalar 'eps' is missing"),
    (lambda c, s: (c, dict(s, epsilon=1e-8)), r"adam: unknown scalar\(s\) \['epsilon'\]"),
    (lambda c, s: ({k: v for k, v in c.items() if k != "l1"}, s), r"common block: the scalar 'l1' is missing"),
])
def test_native_step_refuses_a_missing_or_unknown_scalar(change, match):
    common, scalars, (p, g, st) = _adam_call()
    before = p[0].copy()
    with pytest.raises(ValueError, match=match):
        _kernels.fused_step(_kernels.ALGORITHMS["adam"].id, *change(common, scalars), 0, p, g, st)
    assert np.array_equal(p[0], before)


def test_native_step_checks_the_buffer_count_for_the_flags():
    """The driver knows how many buffers (algorithm, flags) keeps and refuses any other
    count, and flag bits the algorithm does not have."""
    common, scalars, (p, g, st) = _adam_call()
    adam = _kernels.ALGORITHMS["adam"].id
    with pytest.raises(ValueError, match=r"adam with flags 0x1 keeps 3 state buffer\(s\)"):
        _kernels.fused_step(adam, common, scalars, 1, p, g, st)
    with pytest.raises(ValueError, match=r"adam with flags 0x0 keeps 2 state buffer\(s\).*got 1"):
        _kernels.fused_step(adam, common, scalars, 0, p, g, st[:1])
    with pytest.raises(ValueError, match=r"flag bits 0x2 outside its 1 flag"):
        _kernels.fused_step(adam, common, scalars, 2, p, g, st)


@pytest.mark.parametrize("name", sorted(_kernels.ALGORITHMS))
def test_kept_buffers_follow_the_flags(name):
    """kept_buffers(flags) is the declared buffers whose flag is on, in declared order;
    the classes' state after a step holds exactly those."""
    native = _kernels.ALGORITHMS[name]
    for bits in range(1 << len(native.flags)):
        kept = _kernels.kept_buffers(native.id, bits)
        assert list(kept) == [b for b in native.buffers if b in kept]
        assert set(native.buffers) >= set(kept)
    expect = {("sgd", 0): (), ("sgd", 1): ("momentum_buffer",), ("adam", 1): native.buffers if name == "adam" else None,
              ("rmsprop", 2): ("square_avg", "momentum_buffer"), ("rmsprop", 1): ("square_avg", "grad_avg")}
    for (algo, bits), want in expect.items():
        if algo == name and want is not None:
            assert _kernels.kept_buffers(native.id, bits) == want


def test_state_after_a_step_holds_the_kept_buffers():
    for flags in itertools.product([False, True], repeat=2):
        p = np.zeros(3)
        opt = fusedoptim.RMSprop([p], centered=flags[0], momentum=0.9 if flags[1] else 0.0)
        opt.step([np.ones(3)])
        bits = opt.spec.flag_bits({"centered": flags[0], "momentum": flags[1]})
        assert set(opt.state[p]) == {"step", *_kernels.kept_buffers(opt.spec.id, bits)}


def test_cuda_entry_points_come_from_the_same_list():
    from fusedoptim import _cuda
    # every element-wise algorithm has a CUDA kernel; the reducing ones (reduce.h) are refused by name
    elementwise = {n for n, s in _kernels.ALGORITHMS.items() if not s.stats}
    assert sorted(_cuda._ALGOS.values()) == sorted(elementwise)
    assert {s.id for s in _kernels.ALGORITHMS.values() if not s.stats} == set(_cuda._ALGOS)
    assert sorted(_cuda._REDUCING.values()) == sorted(set(_kernels.ALGORITHMS) - elementwise)
