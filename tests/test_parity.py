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


@pytest.mark.parametrize("alias", ["schedule_free_adamw", "schedule_free_sgd"])
def test_optax_schedule_free_parity(alias):
    """optax's params are y (fusedoptim's train mode); schedule_free_eval_params gives x
    (fusedoptim's eval())."""
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    from optax import contrib
    grads, start = _grads(301), _start(301)
    if alias == "schedule_free_adamw":
        tx = contrib.schedule_free_adamw(0.0025, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeAdamW, dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    else:
        tx = contrib.schedule_free_sgd(0.1, b1=0.9, weight_decay=0.01)
        opt_cls, kw = fo.ScheduleFreeSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)
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
