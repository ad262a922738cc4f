"""Optional parity suite: fusedoptim side by side with Keras 3 (JAX backend) and optax.

Each configuration runs 200 steps of random float32 gradients through the oracle and
through fusedoptim from the same start, and compares the parameters.  Keras is driven
through ``fusedoptim.keras`` with Keras's own arguments (nothing translated); optax
through the torch-style classes with the documented options (README, "Coming from
optax").  Skips cleanly without keras / jax / optax (``pip install '.[parity]'``).

Tolerance: rtol = atol = 1e-5 after 200 float32 steps.  The formulas are the same but
not the order of every rounding (Keras and optax compute their per-step scalars in
float32 and decay as ``p - p * wd * lr``; fusedoptim in double and as ``p * (1 - lr wd)``),
so parameters of size ~1 drift apart by up to ~1e-5 (about 100 float32 ulps) in 200
steps; a wrong formula moves them by orders of magnitude more.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import fusedoptim as fo  # noqa: E402

STEPS = 200
SHAPE = (3, 37)


def _grads(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(STEPS)]


def _start(seed):
    return np.random.default_rng(seed + 1000).standard_normal(SHAPE).astype(np.float32)


# ---------------------------------------------------------------------------- Keras
KERAS_CASES = [
    ("Adam", dict(learning_rate=0.01)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(learning_rate=0.01)),
    ("SGD", dict(learning_rate=0.01)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(learning_rate=0.01, nesterov=True)),
    ("RMSprop", dict(learning_rate=0.001)),
    ("RMSprop", dict(learning_rate=0.001, momentum=0.9, centered=True)),
    ("Adagrad", dict(learning_rate=0.01, weight_decay=0.01)),
    ("Adamax", dict(learning_rate=0.01)),
    ("Nadam", dict(learning_rate=0.01)),
    ("Adadelta", dict(learning_rate=1.0, weight_decay=0.01)),
    ("Lion", dict(learning_rate=0.001, weight_decay=0.1)),
    ("Adam", dict(learning_rate=0.01, global_clipnorm=1.0, use_ema=True, ema_momentum=0.9)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9, clipnorm=0.5, gradient_accumulation_steps=2)),
    ("RMSprop", dict(learning_rate=0.001, clipvalue=0.5, loss_scale_factor=8.0)),
    ("Adafactor", dict(learning_rate=0.01)),        # SHAPE is 2-D: the factored statistics
    ("Adafactor", dict(learning_rate=0.01, weight_decay=0.01, clip_threshold=0.5, beta_2_decay=-0.6)),
    ("Adafactor", dict(learning_rate=0.01, epsilon_1=1e-20, epsilon_2=1e-2, global_clipnorm=2.0)),
    ("Ftrl", dict(learning_rate=0.05)),
    ("Ftrl", dict(learning_rate=0.05, learning_rate_power=-0.2, l1_regularization_strength=0.01,
                  l2_regularization_strength=0.02, l2_shrinkage_regularization_strength=0.01, beta=0.3,
                  weight_decay=0.01)),
    ("Lamb", dict(learning_rate=0.01)),
    ("Lamb", dict(learning_rate=0.01, weight_decay=0.01, beta_1=0.8, epsilon=1e-4)),
    # EMA and gradient accumulation together: Keras blends the average on every call
    ("Adam", dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=3)),
    ("SGD", dict(learning_rate=0.01, momentum=0.9, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=4,
                 gradient_accumulation_steps=2)),
]


def _case_id(case):
    name, kw = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("case", KERAS_CASES, ids=_case_id)
def test_keras_parity(case):
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the parity suite runs Keras on the JAX backend")
    from fusedoptim import keras as fk

    name, kw = case
    seed = KERAS_CASES.index(case)
    grads, start = _grads(seed), _start(seed)
    import jax

    ref_opt = getattr(keras.optimizers, name)(**kw)
    ref = keras.Variable(start.copy())
    ours_opt = getattr(fk, name)(**kw)
    ours = fk.Variable(start.copy())
    scale = kw.get("loss_scale_factor", 1.0)
    # Keras's own path, compiled as its JAX trainer runs it: stateless_apply (the whole of
    # apply_gradients: loss scaling, clipping, accumulation, EMA, the update) under jax.jit,
    # about 100x faster than 200 eager calls and equal to them to float32 rounding
    ref_opt.build([ref])
    opt_vars, train_vars = [v.value for v in ref_opt.variables], [ref.value]
    apply = jax.jit(ref_opt.stateless_apply)
    for g in grads:
        train_vars, opt_vars = apply(opt_vars, [jax.numpy.asarray(g * scale)], train_vars)
        ours_opt.apply_gradients([(g * scale, ours)])
    ref.assign(train_vars[0])
    for v, value in zip(ref_opt.variables, opt_vars):
        v.assign(value)
    if kw.get("use_ema"):
        np.testing.assert_allclose(ours_opt.model_variables_moving_average[0],
                                   np.asarray(ref_opt._model_variables_moving_average[0]), rtol=1e-5, atol=1e-5)
    assert ours_opt.iterations == int(ref_opt.iterations)
    np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- optax
# (optax alias, its kwargs, fusedoptim class, its kwargs): every optax alias fusedoptim
# has an optimizer for, with the options that give optax's formulas
OPTAX_CASES = [
    ("sgd", dict(learning_rate=0.01), "SGD", dict(lr=0.01)),
    ("sgd", dict(learning_rate=0.01, momentum=0.9), "SGD", dict(lr=0.01, momentum=0.9)),
    ("sgd", dict(learning_rate=0.01, momentum=0.9, nesterov=True), "SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("adam", dict(learning_rate=0.01), "Adam", dict(lr=0.01)),
    ("adam", dict(learning_rate=0.01, eps_root=1e-8), "Adam", dict(lr=0.01, eps_root=1e-8)),
    ("adamw", dict(learning_rate=0.01), "AdamW", dict(lr=0.01, weight_decay=1e-4)),
    ("adamw", dict(learning_rate=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("amsgrad", dict(learning_rate=0.01), "Adam", dict(lr=0.01, amsgrad=True, amsgrad_bias_corrected=True)),
    ("adagrad", dict(learning_rate=0.01), "Adagrad",
     dict(lr=0.01, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True)),
    ("rmsprop", dict(learning_rate=0.001), "RMSprop", dict(lr=0.001, alpha=0.9, eps=1e-8, eps_in_sqrt=True)),
    ("rmsprop", dict(learning_rate=0.001, centered=True, momentum=0.9, nesterov=True, eps_in_sqrt=False,
                     initial_scale=0.1), "RMSprop",
     dict(lr=0.001, alpha=0.9, eps=1e-8, centered=True, momentum=0.9, nesterov=True, lr_in_momentum=True,
          initial_scale=0.1)),
    ("rmsprop", dict(learning_rate=0.001, bias_correction=True), "RMSprop",
     dict(lr=0.001, alpha=0.9, eps=1e-8, eps_in_sqrt=True, bias_correction=True)),
    ("adamax", dict(learning_rate=0.01), "Adamax", dict(lr=0.01, eps=1e-8)),
    ("adadelta", dict(learning_rate=1.0), "Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6)),
    ("lion", dict(learning_rate=0.001), "Lion", dict(lr=0.001, betas=(0.9, 0.99), weight_decay=1e-3)),
    ("nadam", dict(learning_rate=0.01), "NAdam", dict(lr=0.01, eps=1e-8, momentum_decay=None)),
    ("nadamw", dict(learning_rate=0.01, weight_decay=0.1), "NAdam",
     dict(lr=0.01, eps=1e-8, momentum_decay=None, weight_decay=0.1, decoupled_weight_decay=True)),
    ("radam", dict(learning_rate=0.01), "RAdam", dict(lr=0.01, eps_after_bias_correction=True), "x64"),
    ("radam", dict(learning_rate=0.01, eps=1e-3), "RAdam", dict(lr=0.01, eps=1e-3, eps_after_bias_correction=True),
     "x64"),
    ("adabelief", dict(learning_rate=0.01), "AdaBelief", dict(lr=0.01, eps=1e-16)),
    ("yogi", dict(learning_rate=0.01), "Yogi", dict(lr=0.01, eps=1e-3, initial_accumulator=1e-6)),
    ("lamb", dict(learning_rate=0.01), "Lamb", dict(lr=0.01, eps=1e-6, bias_correction=True, plain_trust_ratio=True)),
    ("lamb", dict(learning_rate=0.01, weight_decay=0.01), "Lamb",
     dict(lr=0.01, eps=1e-6, weight_decay=0.01, weight_decouple=False, bias_correction=True, plain_trust_ratio=True)),
    ("lars", dict(learning_rate=0.1, weight_decay=0.01), "LARS",
     dict(lr=0.1, weight_decay=0.01, momentum=0.9, trust_coefficient=0.001, weight_decay_in_norm=True,
          trust_all_tensors=True)),
    ("lars", dict(learning_rate=0.1, weight_decay=0.01, nesterov=True, eps=1e-3), "LARS",
     dict(lr=0.1, weight_decay=0.01, momentum=0.9, nesterov=True, trust_coefficient=0.001,
          weight_decay_in_norm=True, trust_all_tensors=True, trust_eps=1e-3)),
    ("novograd", dict(learning_rate=0.01, weight_decay=0.01), "NovoGrad",
     dict(lr=0.01, betas=(0.9, 0.25), eps=1e-6, weight_decay=0.01)),
    ("adan", dict(learning_rate=0.01, weight_decay=0.01, eps_root=0.0), "Adan",
     dict(lr=0.01, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.01, weight_decouple=True,
          optax_diff_weight=True)),
    ("adan", dict(learning_rate=0.01, weight_decay=0.01), "Adan",          # optax's default eps_root=1e-8
     dict(lr=0.01, betas=(0.98, 0.92, 0.99), eps=1e-8, eps_root=1e-8, weight_decay=0.01, weight_decouple=True,
          optax_diff_weight=True)),
    ("adan", dict(learning_rate=0.01, b1=0.9, b2=0.8, b3=0.95, eps=1e-6, eps_root=1e-4), "Adan",
     dict(lr=0.01, betas=(0.9, 0.8, 0.95), eps=1e-6, eps_root=1e-4, weight_decay=0.0, weight_decouple=True,
          optax_diff_weight=True)),
    ("rprop", dict(learning_rate=0.01), "Rprop", dict(lr=0.01, delayed=True)),
    ("rprop", dict(learning_rate=0.01, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-3, max_step_size=0.05),
     "Rprop", dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), delayed=True)),
    # signum / sign_sgd: the sign of the gradient's EMA (or of the gradient) is Lion's with b1 = b2
    ("signum", dict(learning_rate=0.01), "Lion", dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.0)),
    ("sign_sgd", dict(learning_rate=0.01), "Lion", dict(lr=0.01, betas=(0.0, 0.0), weight_decay=0.0)),
    # the aliases above with other hyperparameters than their defaults
    ("adam", dict(learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-4), "Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-4)),
    ("adagrad", dict(learning_rate=0.05, initial_accumulator_value=0.5, eps=1e-4), "Adagrad",
     dict(lr=0.05, initial_accumulator_value=0.5, eps=1e-4, eps_in_sqrt=True)),
    ("rmsprop", dict(learning_rate=0.001, decay=0.8, eps=1e-6, centered=True), "RMSprop",
     dict(lr=0.001, alpha=0.8, eps=1e-6, eps_in_sqrt=True, centered=True)),
    ("rmsprop", dict(learning_rate=0.001, momentum=0.9), "RMSprop",
     dict(lr=0.001, alpha=0.9, eps=1e-8, eps_in_sqrt=True, momentum=0.9, lr_in_momentum=True)),
    ("adamax", dict(learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-4), "Adamax",
     dict(lr=0.01, betas=(0.8, 0.95), eps=1e-4)),
    ("adadelta", dict(learning_rate=0.5, rho=0.95, eps=1e-5, weight_decay=0.01), "Adadelta",
     dict(lr=0.5, rho=0.95, eps=1e-5, weight_decay=0.01)),
    ("lion", dict(learning_rate=0.001, b1=0.95, b2=0.98, weight_decay=0.1), "Lion",
     dict(lr=0.001, betas=(0.95, 0.98), weight_decay=0.1)),
    ("amsgrad", dict(learning_rate=0.01, b1=0.8, b2=0.95, eps_root=1e-6), "Adam",
     dict(lr=0.01, betas=(0.8, 0.95), eps_root=1e-6, amsgrad=True, amsgrad_bias_corrected=True)),
    ("novograd", dict(learning_rate=0.01, b1=0.8, b2=0.5), "NovoGrad", dict(lr=0.01, betas=(0.8, 0.5), eps=1e-6)),
    ("adamaxw", dict(learning_rate=0.01), "Adamax",
     dict(lr=0.01, eps=1e-8, weight_decay=1e-4, decoupled_weight_decay=True)),
]


def _x64(on):
    """optax in float64 (``"x64"`` cases): optax's RAdam computes its rectification term in
    float32, where 1 - β₂^t loses digits on the first rectified steps (its float32 result
    is ~4e-5 from its own formula evaluated in float64 after 200 steps; fusedoptim's
    float32 result, with its per-step scalars in double, is within 2e-6 of it)."""
    import contextlib

    import jax
    return jax.enable_x64(True) if on else contextlib.nullcontext()


def _jit_step(tx):
    """One optax step (update, then apply_updates) compiled with jax.jit, as optax is used
    in training: ~100x faster than eager calls, the same formulas."""
    import jax
    import optax

    def step(g, state, params):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state
    return jax.jit(step)


@pytest.mark.parametrize("case", OPTAX_CASES, ids=lambda c: f"{c[0]}-" + "-".join(f"{k}={v}" for k, v in c[1].items()))
def test_optax_parity(case):
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    alias, okw, cls, fkw = case[:4]
    x64 = case[4:] == ("x64",)
    seed = 100 + OPTAX_CASES.index(case)
    grads, start = _grads(seed), _start(seed)
    ours = start.copy()
    opt = getattr(fo, cls)([ours], **fkw)
    with _x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        tx = getattr(optax, alias)(**okw)
        params = jnp.asarray(start, dt)
        state = tx.init(params)
        step = _jit_step(tx)
        for g in grads:
            params, state = step(jnp.asarray(g, dt), state, params)
            opt.step([g])
        ref = np.asarray(params)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_optax_lookahead_parity():
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    grads, start = _grads(300), _start(300)
    tx = optax.lookahead(optax.adam(0.01), sync_period=5, slow_step_size=0.5)
    params = optax.LookaheadParams.init_synced(jnp.asarray(start))
    state = tx.init(params)
    ours = start.copy()
    opt = fo.Lookahead(fo.Adam([ours], lr=0.01), k=5, alpha=0.5)
    for g in grads[:198]:         # 198 = 39 syncs + 3 fast steps: fast and slow differ
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        opt.step([g])
    np.testing.assert_allclose(ours, np.asarray(params.fast), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["slow_params"], np.asarray(params.slow),
                               rtol=1e-5, atol=1e-5)


def _schedule_free_against_optax(tx, opt_cls, kw, grads, start):
    """200 steps of optax's schedule-free ``tx`` and ``opt_cls(**kw)``: optax's params are
    y (fusedoptim's train mode); schedule_free_eval_params gives x (fusedoptim's eval())."""
    import jax.numpy as jnp
    import optax
    from optax import contrib
    params = jnp.asarray(start)
    state = tx.init(params)
    ours = start.copy()
    opt = opt_cls([ours], **kw)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        opt.step([g])
    np.testing.assert_allclose(ours, np.asarray(params), rtol=1e-5, atol=1e-5)
    opt.eval()
    np.testing.assert_allclose(ours, np.asarray(contrib.schedule_free_eval_params(state, params)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alias", ["schedule_free_adamw", "schedule_free_sgd"])
def test_optax_schedule_free_parity(alias):
    """optax's params are y (fusedoptim's train mode); schedule_free_eval_params gives x
    (fusedoptim's eval())."""
    pytest.importorskip("jax.numpy")
    pytest.importorskip("optax")
    from optax import contrib
    grads, start = _grads(301), _start(301)
    if alias == "schedule_free_adamw":
        tx = contrib.schedule_free_adamw(0.0025, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeAdamW, dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    else:
        tx = contrib.schedule_free_sgd(0.1, b1=0.9, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    _schedule_free_against_optax(tx, opt_cls, kw, grads, start)


# ---------------------------------------------------------------- optax.adafactor
# (optax kwargs, Adafactor kwargs): optax's defaults are eps=1e-30, decay_rate=0.8,
# clipping_threshold=1, multiply_by_parameter_scale, min_dim_size_to_factor=128, no lr cap
_AF_OPTAX = dict(eps=(1e-30, 1e-3), eps_in_stats=True, cap_lr=False, min_dim_size_to_factor=128)
ADAFACTOR_CASES = [
    (dict(learning_rate=0.01), dict(lr=0.01, **_AF_OPTAX)),
    (dict(learning_rate=0.01, min_dim_size_to_factor=3, decay_rate=0.7, clipping_threshold=None,
          multiply_by_parameter_scale=False, momentum=0.9, weight_decay_rate=1e-3, eps=1e-20),
     dict(_AF_OPTAX, lr=0.01, beta2_decay=-0.7, d=None, multiply_by_parameter_scale=False, momentum=0.9,
          weight_decay=1e-3 / 0.01, eps=(1e-20, 1e-3), min_dim_size_to_factor=3)),
    (dict(learning_rate=0.01, clipping_threshold=0.5, momentum=0.8), dict(_AF_OPTAX, lr=0.01, d=0.5, momentum=0.8)),
]
# (3, 37): kept whole under min_dim_size_to_factor=128 (factored with 3); (130, 129): factored,
# and larger than one work unit (split); a vector
AF_SHAPES = [(3, 37), (130, 129), (50,)]


@pytest.mark.parametrize("case", ADAFACTOR_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c[0].items()))
def test_optax_adafactor_parity(case):
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    okw, fkw = case
    _adafactor_run(okw, fkw, 400 + ADAFACTOR_CASES.index(case), STEPS)


def test_optax_adafactor_without_lr_parity():
    """optax's default learning_rate=None (no lr factor: each step moves by about RMS(θ))
    is lr=1.0, cap_lr=False.  On random gradients that run grows the parameters about 1.3x
    per step (1e3 after 20 steps, overflow before 200), so it is compared over 12 steps,
    with atol 1e-5 RMS(θ): every move is ~RMS(θ) (~50 here), so an element that ends near
    0 carries the float32 rounding of moves 1000x its size."""
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    _adafactor_run(dict(learning_rate=None), dict(lr=1.0, **_AF_OPTAX), 401, 12, rms_atol=True)


def _adafactor_run(okw, fkw, seed, steps, rms_atol=False):
    import jax.numpy as jnp
    import optax
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(np.float32) for s in AF_SHAPES]
    ours = [p.copy() for p in start]
    opt = fo.Adafactor(ours, **fkw)
    tx = optax.adafactor(**okw)
    params = [jnp.asarray(p) for p in start]
    state = tx.init(params)
    step = _jit_step(tx)
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(np.float32) for s in AF_SHAPES]
        params, state = step([jnp.asarray(g) for g in gs], state, params)
        opt.step(gs)
    for p, ref in zip(ours, params):
        ref = np.asarray(ref)
        atol = 1e-5 * float(np.sqrt(np.mean(np.square(ref)))) if rms_atol else 1e-5
        np.testing.assert_allclose(p, ref, rtol=1e-5, atol=atol)


# ---------------------------------------------------------------- optax.contrib.muon
@pytest.mark.parametrize("okw", [dict(), dict(nesterov=False, weight_decay=0.01), dict(consistent_rms=0.2, beta=0.9)],
                         ids=str)
def test_optax_muon_parity(okw):
    """optax's parameters are (fan_in, fan_out): adjust_lr_fn="width_transfer"; both
    shapes orientations (Newton-Schulz transposes a tall matrix)."""
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("optax")
    from optax import contrib
    rng = np.random.default_rng(500)
    shapes = [(3, 37), (37, 3), (16, 16)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = [p.copy() for p in start]
    opt = fo.Muon(ours, lr=0.01, weight_decay=okw.get("weight_decay", 0.0), momentum=okw.get("beta", 0.95),
                  nesterov=okw.get("nesterov", True), eps=1e-8, bias_correction=True, adjust_lr_fn="width_transfer",
                  consistent_rms=okw.get("consistent_rms"))
    tx = contrib.muon(learning_rate=0.01, **okw)
    params = [jnp.asarray(p) for p in start]
    state = tx.init(params)
    step = _jit_step(tx)               # eager optax.contrib.muon takes seconds per step
    for _ in range(STEPS):
        gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        params, state = step([jnp.asarray(g) for g in gs], state, params)
        opt.step(gs)
    for p, ref in zip(ours, params):
        np.testing.assert_allclose(p, np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alias", ["schedule_free_adamw", "schedule_free_sgd"])
def test_optax_schedule_free_warmup_parity(alias):
    """optax's warmup_steps (a warmup_constant_schedule read at t for the averaging weight,
    at t - 1 for the z step): optax_warmup=True."""
    pytest.importorskip("jax.numpy")
    pytest.importorskip("optax")
    from optax import contrib
    grads, start = _grads(302), _start(302)
    if alias == "schedule_free_adamw":
        tx = contrib.schedule_free_adamw(0.01, warmup_steps=20, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeAdamW, dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    else:
        tx = contrib.schedule_free_sgd(0.1, warmup_steps=20, b1=0.9, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    _schedule_free_against_optax(tx, opt_cls, dict(kw, warmup_steps=20, optax_warmup=True), grads, start)


@pytest.mark.parametrize("cls", ["AdamWScheduleFree", "SGDScheduleFree"])
def test_schedulefree_package_warmup_parity(cls):
    """The schedulefree package's warmup_steps is the default form (one warmup value per
    step for both the z step and the averaging weight)."""
    torch = pytest.importorskip("torch")
    sf = pytest.importorskip("schedulefree")
    grads, start = _grads(303), _start(303)
    t = torch.tensor(start.copy())
    if cls == "AdamWScheduleFree":
        ref = sf.AdamWScheduleFree([t], lr=0.01, warmup_steps=20, weight_decay=0.01, foreach=False)
        opt = fo.ScheduleFreeAdamW([ours := start.copy()], lr=0.01, warmup_steps=20, weight_decay=0.01)
    else:
        ref = sf.SGDScheduleFree([t], lr=0.1, warmup_steps=20, weight_decay=0.01, foreach=False)
        opt = fo.ScheduleFreeSGD([ours := start.copy()], lr=0.1, warmup_steps=20, weight_decay=0.01)
    ref.train()
    for g in grads:
        t.grad = torch.from_numpy(g.copy())
        ref.step()
        opt.step([g])
    np.testing.assert_allclose(ours, t.numpy(), rtol=1e-5, atol=1e-5)
