"""Keras's own optimizer tests, reproduced with ``fusedoptim.keras``.

Every number below is copied from keras-team/keras v3.15.1, ``keras/src/optimizers/``
(the file and test are named beside each case), with that test's tolerance.  The tests
are rewritten only to call ``fusedoptim.keras`` instead of ``keras.optimizers``, NumPy
arrays (``fk.Variable``) instead of Keras variables, and -- where Keras calls the private
``_clip_gradients`` -- one SGD step with ``learning_rate=1.0`` from zero, whose result is
minus the clipped gradient.  No argument is translated.
"""
import numpy as np
import pytest

from fusedoptim import keras as fk

# keras.src.testing.TestCase.assertAllClose's defaults
KERAS_RTOL = KERAS_ATOL = 1e-6


def close(actual, desired, rtol=KERAS_RTOL, atol=KERAS_ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(desired, np.float64), rtol=rtol, atol=atol)


def arange_grads():
    return np.arange(0.1, 1.1, 0.1, dtype=np.float32)      # ops.arange(0.1, 1.1, 0.1)


# --------------------------------------------------------------------- test_single_step
# <name>_test.py::<Name>Test::test_single_step: learning_rate=0.5, grads [1, 6, 7, 2],
# vars [1, 2, 3, 4], one apply_gradients, rtol = atol = 1e-4
SINGLE_STEP = {
    "Adam": [0.5, 1.5, 2.5, 3.5],
    "AdamW": [0.4980, 1.4960, 2.494, 3.492],
    "SGD": [0.5, -1.0, -0.5, 3.0],
    "RMSprop": [-0.5811, 0.4189, 1.4189, 2.4189],
    "Adagrad": [0.5233, 1.5007, 2.5005, 3.5061],
    "Adamax": [0.5, 1.5, 2.5, 3.5],
    "Nadam": [0.4686, 1.4686, 2.4686, 3.4686],
    "Adadelta": [0.9993, 1.9993, 2.9993, 3.9993],
    "Lion": [0.5, 1.5, 2.5, 3.5],
    # ftrl_test.py (keras-team/keras 51d7e77) and lamb_test.py (405307d): vars as backend.Variable
    # of Python floats (float32), grads np.array / ops.array of floats
    "Ftrl": [0.2218, 1.3954, 2.3651, 2.8814],
    "Lamb": [-0.3693, 0.6306, 1.6306, 2.6306],
}


@pytest.mark.parametrize("name", sorted(SINGLE_STEP))
def test_single_step(name):
    optimizer = getattr(fk, name)(learning_rate=0.5)
    grads = np.array([1.0, 6.0, 7.0, 2.0], np.float32)
    vars = fk.Variable([1.0, 2.0, 3.0, 4.0])
    if name == "SGD":
        optimizer.build([vars])                           # sgd_test builds first
    optimizer.apply_gradients(zip([grads], [vars]))
    close(vars, SINGLE_STEP[name], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ test_correctness_with_golden
# <name>_test.py::<Name>Test::test_correctness_with_golden: one step with 0.01, then
# golden[i] is checked before step i + 2 with grads arange(0.1, 1.1, 0.1); rtol = atol = 5e-4
def _tile(col):
    return np.tile(np.array(col)[:, None], (1, 10))


GOLDEN = {
    "Adam": (dict(amsgrad=True), _tile([0.999, 0.9982, 0.9974, 0.9965, 0.9955])),
    "AdamW": (dict(learning_rate=1.0, weight_decay=0.5, epsilon=2), np.array([
        [0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998],
        [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
        [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
        [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
        [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159]])),
    "SGD": (dict(nesterov=True), np.array([
        [0.9999, 0.9999, 0.9999, 0.9999, 0.9999, 0.9999, 0.9999, 0.9999, 0.9999, 0.9999],
        [0.9989, 0.9979, 0.9969, 0.9959, 0.9949, 0.9939, 0.9929, 0.9919, 0.9909, 0.9899],
        [0.9979, 0.9959, 0.9939, 0.9919, 0.9899, 0.9879, 0.9859, 0.9839, 0.9819, 0.9799],
        [0.9969, 0.9939, 0.9909, 0.9879, 0.9849, 0.9819, 0.9789, 0.9759, 0.9729, 0.9699],
        [0.9959, 0.9919, 0.9879, 0.9839, 0.9799, 0.9759, 0.9719, 0.9679, 0.9639, 0.9599]])),
    "RMSprop": (dict(centered=True), _tile([0.9967, 0.9933, 0.9908, 0.9885, 0.9864])),
    "Adagrad": (dict(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6), np.array([
        [0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963, 0.9963],
        [0.9604, 0.9278, 0.9003, 0.8784, 0.8615, 0.8487, 0.8388, 0.8313, 0.8255, 0.8209],
        [0.9251, 0.8629, 0.8137, 0.7768, 0.7497, 0.7298, 0.7151, 0.704, 0.6956, 0.6891],
        [0.8903, 0.8012, 0.7342, 0.6862, 0.6521, 0.6277, 0.6099, 0.5967, 0.5867, 0.579],
        [0.856, 0.7422, 0.6604, 0.6037, 0.5644, 0.5367, 0.5168, 0.5021, 0.491, 0.4825]])),
    "Adamax": (dict(learning_rate=0.2, beta_1=0.85, beta_2=0.95, epsilon=1e-6), np.array([
        [0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
        [0.6827, 0.6873, 0.6888, 0.6896, 0.6901, 0.6904, 0.6906, 0.6908, 0.6909, 0.691],
        [0.5333, 0.5407, 0.5431, 0.5444, 0.5451, 0.5456, 0.546, 0.5462, 0.5464, 0.5466],
        [0.368, 0.3773, 0.3804, 0.382, 0.3829, 0.3835, 0.384, 0.3843, 0.3846, 0.3848],
        [0.1933, 0.204, 0.2076, 0.2094, 0.2105, 0.2112, 0.2117, 0.2121, 0.2124, 0.2126]])),
    "Nadam": (dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5), np.array([
        [0.4281, 0.4281, 0.4281, 0.4281, 0.4281, 0.4281, 0.4281, 0.4281, 0.4281, 0.4281],
        [-0.1738, -0.1731, -0.1726, -0.1723, -0.1721, -0.172, -0.1719, -0.1718, -0.1718, -0.1717],
        [-0.7115, -0.7103, -0.7096, -0.7092, -0.709, -0.7088, -0.7086, -0.7085, -0.7085, -0.7084],
        [-1.2335, -1.2322, -1.2313, -1.2309, -1.2306, -1.2304, -1.2302, -1.2301, -1.23, -1.2299],
        [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454]])),
    "Adadelta": (dict(learning_rate=1.0, rho=0.8, epsilon=1e-6), _tile([0.9978, 0.9947, 0.9915, 0.9882, 0.9849])),
    "Lion": (dict(), _tile([0.999, 0.998, 0.997, 0.996, 0.995])),
    # ftrl_test.py::FtrlTest::test_correctness_with_golden (keras-team/keras 51d7e77)
    "Ftrl": (dict(learning_rate=0.05, learning_rate_power=-0.2, initial_accumulator_value=0.4,
                  l1_regularization_strength=0.05, l2_regularization_strength=0.15,
                  l2_shrinkage_regularization_strength=0.01, beta=0.3), np.array([
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-0.0034, -0.0077, -0.0118, -0.0157, -0.0194, -0.023, -0.0263, -0.0294, -0.0325, -0.0354],
        [-0.0078, -0.0162, -0.0242, -0.0317, -0.0387, -0.0454, -0.0516, -0.0575, -0.0631, -0.0685],
        [-0.0121, -0.0246, -0.0363, -0.0472, -0.0573, -0.0668, -0.0757, -0.0842, -0.0922, -0.0999],
        [-0.0164, -0.0328, -0.0481, -0.0623, -0.0753, -0.0875, -0.099, -0.1098, -0.1201, -0.1299]])),
    # lamb_test.py::LambTest::test_correctness_with_golden (keras-team/keras 405307d)
    "Lamb": (dict(), _tile([0.999, 0.9982, 0.9974, 0.9965, 0.9955])),
}


F32_START = {"Adam", "AdamW", "Adamax", "Nadam"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_correctness_with_golden(name):
    kwargs, golden = GOLDEN[name]
    optimizer = getattr(fk, name)(**kwargs)
    # as written in each Keras test: np.ones([10], dtype="float32") or np.ones([10])
    x = fk.Variable(np.ones([10], dtype="float32") if name in F32_START else np.ones([10]))
    grads = arange_grads()
    first_grads = np.full((10,), 0.01, np.float32)
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        close(x, golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


# ------------------------------------------------------------------ test_weight_decay
# adam, adamw, sgd, rmsprop, adagrad, adamax, nadam _test.py::test_weight_decay (Adadelta
# and Lion have no such Keras test; the same expectation holds for them):
# assertAlmostEqual(..., decimal=6)
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "Nadam",
                                  "Adadelta", "Lion", "Lamb"])   # lamb_test.py::test_weight_decay too
def test_weight_decay(name):
    cls = getattr(fk, name)
    grads, var1, var2, var3 = (np.zeros((), np.float32), fk.Variable(2.0), fk.Variable(2.0, name="exclude"),
                               fk.Variable(2.0))
    optimizer_1 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients(zip([grads], [var1]))

    optimizer_2 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))

    optimizer_3 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))

    assert round(abs(float(var1.numpy()) - 1.9760959), 6) == 0
    assert round(abs(float(var2.numpy()) - 2.0), 6) == 0
    assert round(abs(float(var3.numpy()) - 2.0), 6) == 0


def test_exclude_from_weight_decay_after_build_raises():
    opt = fk.SGD(weight_decay=0.1)
    opt.apply_gradients([(np.ones(2, np.float32), fk.Variable([1.0, 2.0]))])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["bias"])


def test_adamw_weight_decay_is_none():
    # adamw_test.py::test_weight_decay_is_none
    with pytest.raises(ValueError, match="Argument `weight_decay` must be a float. Received: weight_decay=None"):
        fk.AdamW(learning_rate=1.0, weight_decay=None)


# ------------------------------------------------------------------ clipping
# <name>_test.py::test_clip_norm / test_clip_value and optimizer_test.py::test_clip_norm,
# test_clip_value, test_global_clip_norm (assertAllClose defaults): Keras checks
# _clip_gradients; here one SGD step of lr 1 from 0 gives minus the clipped gradient.
def _clipped(grad, **kw):
    grad = np.asarray(grad, np.float32)
    v = fk.Variable(np.zeros_like(grad))
    fk.SGD(learning_rate=1.0, **kw).apply_gradients([(grad, v)])
    return -v


@pytest.mark.parametrize("name", sorted(SINGLE_STEP))
def test_clip_norm_and_value_are_the_options_of_every_optimizer(name):
    # the per-optimizer Keras tests only check the option is accepted and clips the same way
    opt = getattr(fk, name)(clipnorm=1)
    assert opt.clipnorm == 1
    opt = getattr(fk, name)(clipvalue=1)
    assert opt.clipvalue == 1


def test_clip_norm():
    close(_clipped([100.0, 100.0], clipnorm=1), [2 ** 0.5 / 2, 2 ** 0.5 / 2])


def test_clip_value():
    close(_clipped([100.0, 100.0], clipvalue=1), [1.0, 1.0])


def test_global_clip_norm():
    grad = np.array([50.0, 100.0], dtype="float32")
    global_norm = np.linalg.norm(grad)
    close(_clipped(grad, global_clipnorm=1), grad / global_norm)


def test_clip_args():
    # optimizer_test.py::test_clip_args
    assert fk.SGD(learning_rate=1.0, clipnorm=0.1).clipnorm == 0.1
    assert fk.SGD(learning_rate=1.0, clipvalue=0.1).clipvalue == 0.1
    assert fk.SGD(learning_rate=1.0, global_clipnorm=0.1).global_clipnorm == 0.1
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
        fk.SGD(learning_rate=1.0, clipnorm=0.1, clipvalue=0.1)
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
        fk.SGD(learning_rate=1.0, clipnorm=0.1, global_clipnorm=0.1)


# ------------------------------------------------------------------ EMA
def test_ema_sgd_overwrite_frequency():
    # optimizer_test.py::test_ema
    v = fk.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = fk.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
    optimizer.apply_gradients([(grads, v)])
    close(v, [[2.0, 3.0], [4.0, 5.0]])
    close(optimizer.model_variables_moving_average[0], [[2.0, 3.0], [4.0, 5.0]])  # initialized after first step
    optimizer.apply_gradients([(grads, v)])
    close(v, [[1.0, 2.0], [3.0, 4.0]])
    close(optimizer.model_variables_moving_average[0], [[1.9, 2.9], [3.9, 4.9]])
    optimizer.apply_gradients([(grads, v)])
    close(v, [[1.71, 2.71], [3.71, 4.71]])          # variables were overwritten with EMA
    close(optimizer.model_variables_moving_average[0], [[1.71, 2.71], [3.71, 4.71]])


def test_ema_adam_and_finalize():
    # adam_test.py::test_ema (the model.fit part needs Keras models)
    optimizer = fk.Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    var = fk.Variable([1.0, 2.0], dtype="float32")
    grads = np.array([0.1, 0.2], dtype="float32")
    optimizer.apply_gradients([(grads, var)])
    v1 = var.numpy().copy()
    close(optimizer.model_variables_moving_average[0], v1)
    optimizer.apply_gradients([(grads, var)])
    v2 = var.numpy().copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    close(optimizer.model_variables_moving_average[0], expected_ema)
    optimizer.finalize_variable_values([var])
    close(var, expected_ema)


def test_ema_overwrite_frequency_adam():
    # adam_test.py::test_ema_overwrite_frequency
    optimizer = fk.Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2)
    optimizer_no_ema = fk.Adam(learning_rate=1.0)
    var = fk.Variable([1.0, 2.0], dtype="float32")
    var_no_ema = fk.Variable([1.0, 2.0], dtype="float32")
    grads = np.array([0.1, 0.2], dtype="float32")
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v1 = var_no_ema.numpy().copy()
    close(var, v1)
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v2 = var_no_ema.numpy().copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    close(var, expected_ema)
    close(optimizer.model_variables_moving_average[0], expected_ema)


# ------------------------------------------------------------------ loss scaling, counters
def test_static_loss_scaling():
    # optimizer_test.py::test_static_loss_scaling
    v = fk.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32) * 1024.0
    optimizer = fk.SGD(learning_rate=1.0, loss_scale_factor=1024.0)
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.scale_loss(1.0) == 1024.0
    close(v, [[0.0, 0.0], [0.0, 0.0]])


def test_iterations_counter():
    # optimizer_test.py::test_iterations_counter
    v = fk.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = fk.Adam(learning_rate=1.0)
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 1
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.iterations == 2


def test_empty_gradients():
    # optimizer_test.py::test_empty_gradients (Keras warns about the skipped variable)
    v = fk.Variable([[3.0, 4.0], [5.0, 6.0]])
    optimizer = fk.SGD(learning_rate=1.0)
    with pytest.raises(ValueError, match="No gradients provided for any variable."):
        optimizer.apply_gradients([(None, v)])
    v2 = fk.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads2 = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = fk.SGD(learning_rate=1.0)
    optimizer.apply_gradients([(None, v), (grads2, v2)])
    close(v, [[3.0, 4.0], [5.0, 6.0]])
    close(v2, [[2.0, 3.0], [4.0, 5.0]])


def test_callable_learning_rate():
    # optimizer_test.py::test_callable_learning_rate
    v = fk.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = fk.SGD(learning_rate=lambda: 0.1)
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(grads, v)])
    close(v, [[0.9, 1.9], [2.9, 3.9]])
    assert optimizer.iterations == 1


def test_invalid_momentum():
    # sgd_test.py::test_invalid_momentum
    for m in (-1.0, 2.0):
        with pytest.raises(ValueError, match="`momentum` must be a float between \\[0, 1\\]."):
            fk.SGD(momentum=m)


@pytest.mark.parametrize("kw, message", [
    (dict(initial_accumulator_value=-0.1), "`initial_accumulator_value` needs to be positive or zero. "
                                           "Received: initial_accumulator_value=-0.1."),
    (dict(learning_rate_power=0.5), "`learning_rate_power` needs to be negative or zero. Received: "
                                    "learning_rate_power=0.5."),
    (dict(l1_regularization_strength=-1.0), "`l1_regularization_strength` needs to be positive or zero. "
                                            "Received: l1_regularization_strength=-1.0."),
])
def test_ftrl_invalid_arguments(kw, message):
    # ftrl.py's own checks (ftrl_test.py has none)
    import re
    with pytest.raises(ValueError, match=re.escape(message)):
        fk.Ftrl(**kw)


def test_ftrl_schedule_reaching_zero_raises_before_the_step():
    v = fk.Variable([1.0, 2.0])
    opt = fk.Ftrl(learning_rate=lambda: 0.0)
    with pytest.raises(ValueError, match="must be > 0 for Ftrl"):
        opt.apply_gradients([(np.ones(2, np.float32), v)])
    close(v, [1.0, 2.0])


@pytest.mark.parametrize("beta_1", [-0.1, 0.0, 1.1])
def test_lion_invalid_beta_1(beta_1):
    # lion_test.py::test_invalid_beta_1
    with pytest.raises(ValueError, match=f"Argument `beta_1` must be in the \\[0, 1\\] range. Otherwise, the "
                                         f"optimizer degenerates to SignSGD. Received: beta_1={beta_1}."):
        fk.Lion(beta_1=beta_1)


# ------------------------------------------------------------------ accumulation
def test_gradient_accumulation():
    # optimizer_test.py::test_gradient_accumulation
    v = fk.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = fk.SGD(learning_rate=1.0, gradient_accumulation_steps=3)
    assert optimizer.gradient_accumulation_steps == 3
    for it, (want_v, want_acc, want_iter) in enumerate([
            ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], 0),
            ([[1.0, 2.0], [3.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]], 0),
            ([[0.0, 1.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]], 1),
            ([[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]], 1)], start=1):
        optimizer.apply_gradients([(grads, v)])
        close(v, want_v)
        close(optimizer.accumulated_gradients[0], want_acc)
        assert optimizer.iterations == want_iter, it


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "lion",
                                       "nadam", "lamb"])
def test_gradient_accumulation_with_weigth_decay(optimizer):
    # optimizer_test.py::test_gradient_accumulation_with_weigth_decay (assertAllClose defaults)
    optimizer1 = fk.get({"class_name": optimizer, "config": {"weight_decay": 0.05}})
    optimizer3 = fk.get({"class_name": optimizer,
                         "config": {"weight_decay": 0.05, "gradient_accumulation_steps": 3}})
    variable1 = fk.Variable([[0.9], [0.5]])
    variable3 = fk.Variable([[0.9], [0.5]])
    rng = np.random.default_rng(0)
    for epoch in range(8):
        grads3 = rng.random([3, 2, 1]).astype("float32")
        grads1 = grads3.mean(axis=0)
        optimizer1.apply_gradients([(grads1, variable1)])
        for batch in range(3):
            optimizer3.apply_gradients([(grads3[batch], variable3)])
    close(variable1, variable3)


# ------------------------------------------------------------------ config
CONFIG = {
    "Adam": dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True),
    "AdamW": dict(learning_rate=0.5, weight_decay=0.008, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True),
    "SGD": dict(learning_rate=0.5, momentum=0.06, nesterov=True, weight_decay=0.004),
    "RMSprop": dict(learning_rate=0.5, rho=0.8, momentum=0.05, epsilon=1e-6, centered=True),
    "Adagrad": dict(learning_rate=0.5, initial_accumulator_value=0.2, epsilon=1e-5),
    "Adamax": dict(learning_rate=0.5, beta_1=0.8, beta_2=0.95, epsilon=1e-5),
    "Nadam": dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5),
    "Adadelta": dict(learning_rate=0.5, rho=0.9, epsilon=1e-5),
    "Lion": dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67),
    "Ftrl": dict(learning_rate=0.05, learning_rate_power=-0.2, initial_accumulator_value=0.4,
                 l1_regularization_strength=0.05, l2_regularization_strength=0.15,
                 l2_shrinkage_regularization_strength=0.01, beta=0.3),
    "Lamb": dict(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5),
}


@pytest.mark.parametrize("name", sorted(CONFIG))
def test_config(name):
    # <name>_test.py::test_config (run_class_serialization_test: config round trip)
    cls = getattr(fk, name)
    optimizer = cls(**CONFIG[name])
    cfg = optimizer.get_config()
    for k, v in CONFIG[name].items():
        assert cfg[k] == v, k
    again = cls.from_config(cfg)
    assert again.get_config() == cfg
    assert fk.get({"class_name": name, "config": cfg}).get_config() == cfg


def test_schedule_learning_rate_round_trips_and_sees_every_call():
    from fusedoptim import schedules
    lr = schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = fk.SGD(learning_rate=lr, gradient_accumulation_steps=2)
    assert opt.learning_rate == 0.1
    v = fk.Variable([0.0])
    for _ in range(2):
        opt.apply_gradients([(np.ones(1, np.float32), v)])
    # Keras: schedules see every call (the update happened on call index 1: lr 0.05)
    close(v, [-0.05])
    assert opt.learning_rate == pytest.approx(0.025)
    again = fk.SGD.from_config(opt.get_config())
    assert again.learning_rate == 0.1


# ------------------------------------------------------------------ README snippets
def _readme_snippet(heading):
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_keras_snippet_runs(capsys):
    scope: dict = {}
    exec(compile(_readme_snippet("## Coming from Keras"), "README Keras snippet", "exec"), scope)
    assert capsys.readouterr().out.split() == ["10", "0.00097553"]
    opt, W = scope["opt"], scope["W"]
    close(W, opt.model_variables_moving_average[0])
    assert scope["again"].get_config() == opt.get_config()


def test_readme_optax_snippet_runs(capsys):
    scope: dict = {}
    exec(compile(_readme_snippet("## Coming from optax"), "README optax snippet", "exec"), scope)
    assert capsys.readouterr().out.startswith("0.99399")


def test_bad_gradient_raises_before_anything_changes():
    v = fk.Variable([1.0, 2.0])
    opt = fk.Adam(learning_rate=0.1)
    with pytest.raises(ValueError, match=r"grads_and_vars\[0\]: the gradient does not fit the variable"):
        opt.apply_gradients([(np.ones(3, np.float32), v)])
    assert not opt.built and opt.iterations == 0
    close(v, [1.0, 2.0])
    opt.apply_gradients([(np.ones(2, np.float32), v)])
    assert opt.built and opt.iterations == 1


def test_state_dict_round_trip_restores_the_schedule_position():
    from fusedoptim import schedules

    def run(n, opt=None, v=None):
        if opt is None:
            v = fk.Variable([1.0, 2.0])
            opt = fk.Adam(learning_rate=schedules.ExponentialDecay(0.1, 1, 0.9), gradient_accumulation_steps=2)
        for _ in range(n):
            opt.apply_gradients([(np.array([0.5, -1.0], np.float32), v)])
        return opt, v

    full, vf = run(7)
    half, vh = run(3)
    fresh_v = fk.Variable(vh.numpy().copy())
    fresh = fk.Adam(learning_rate=schedules.ExponentialDecay(0.1, 1, 0.9), gradient_accumulation_steps=2)
    fresh.build([fresh_v])
    fresh.load_state_dict(half.state_dict())
    assert fresh.learning_rate == half.learning_rate
    run(4, fresh, fresh_v)
    np.testing.assert_array_equal(fresh_v, vf)


# ------------------------------------------------------------------------ Adafactor
# keras-team/keras v3.15.1 keras/src/optimizers/adafactor_test.py::AdafactorTest, numbers
# and tolerances as written there
def test_adafactor_single_step_1d():
    optimizer = fk.Adafactor(learning_rate=0.5)
    grads = np.array([1.0, 6.0, 7.0, 2.0])
    vars = fk.Variable([1.0, 2.0, 3.0, 4.0])
    optimizer.apply_gradients(zip([grads], [vars]))
    close(vars, [-0.3693, 0.6307, 1.6307, 2.6307], rtol=1e-4, atol=1e-4)


def test_adafactor_single_step_2d():
    optimizer = fk.Adafactor(learning_rate=0.5)
    grads = np.array([[1.0, 6.0], [7.0, 2.0]])
    vars = fk.Variable([[1.0, 2.0], [3.0, 4.0]])
    optimizer.apply_gradients(zip([grads], [vars]))
    close(vars, [[0.7007, -0.0081], [1.2492, 3.4407]], rtol=1e-4, atol=1e-4)


def test_adafactor_weight_decay():
    grads, var1, var2, var3 = (np.zeros(()), fk.Variable(2.0), fk.Variable(2.0, name="exclude"), fk.Variable(2.0))
    optimizer_1 = fk.Adafactor(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients(zip([grads], [var1]))

    optimizer_2 = fk.Adafactor(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))

    optimizer_3 = fk.Adafactor(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))

    assert round(abs(float(var1.numpy()) - 1.9760959), 6) == 0
    assert round(abs(float(var2.numpy()) - 2.0), 6) == 0
    assert round(abs(float(var3.numpy()) - 2.0), 6) == 0


def test_adafactor_correctness_with_golden():
    optimizer = fk.Adafactor(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4,
                             clip_threshold=0.9, relative_step=False)
    x = fk.Variable(np.ones([10]))
    grads = np.arange(0.1, 1.1, 0.1)
    first_grads = np.full((10,), 0.01)
    golden = np.array(
        [[0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55],
         [0.3031, 0.3026, 0.3025, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024],
         [0.1671, 0.1665, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663],
         [0.0923, 0.0916, 0.0915, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914],
         [0.0554, 0.0548, 0.0546, 0.0546, 0.0546, 0.0546, 0.0546, 0.0545, 0.0545, 0.0545]])
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        close(x, golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


def test_adafactor_config_and_clipping():
    # adafactor_test.py::test_config, test_clip_norm, test_clip_value (the latter two
    # through two steps: the clipped gradient, then a small one that no option clips, whose
    # update depends on the second moment the first left; equal to the same steps with the
    # gradient clipped by hand)
    kw = dict(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4, clip_threshold=0.9,
              relative_step=False)
    cfg = fk.Adafactor(**kw).get_config()
    for k, v in kw.items():
        assert cfg[k] == v, k
    assert fk.Adafactor.from_config(cfg).get_config() == cfg
    for opts, clipped in ((dict(clipnorm=1), [2**0.5 / 2, 2**0.5 / 2]), (dict(clipvalue=1), [1.0, 1.0])):
        a, b = fk.Variable([1.0, -2.0]), fk.Variable([1.0, -2.0])
        oa, ob = fk.Adafactor(**opts), fk.Adafactor()
        oa.apply_gradients(zip([np.array([100.0, 100.0])], [a]))
        ob.apply_gradients(zip([np.array(clipped)], [b]))
        oa.apply_gradients(zip([np.array([0.5, 0.1])], [a]))
        ob.apply_gradients(zip([np.array([0.5, 0.1])], [b]))
        close(a, b)
        c, oc = fk.Variable([1.0, -2.0]), fk.Adafactor()    # unclipped: a different second step
        oc.apply_gradients(zip([np.array([100.0, 100.0])], [c]))
        oc.apply_gradients(zip([np.array([0.5, 0.1])], [c]))
        assert not np.allclose(c, b, rtol=1e-6, atol=1e-6)
@pytest.mark.parametrize("freq, want", [
    (None, [(1.0, None), (0.0, 0.0), (0.0, 0.0), (-1.0, -0.5), (-1.0, -0.75), (-2.0, -1.375)]),
    (3, [(1.0, None), (0.0, 0.0), (0.0, 0.0), (-1.0, -0.5), (-0.75, -0.75), (-1.25, -1.25)]),
])
def test_ema_with_gradient_accumulation_blends_on_every_call(freq, want):
    # base_optimizer.py (Keras 3.15, and backend/jax/optimizer.py): with accumulation the
    # average is updated on every apply_gradients call, with momentum 0 while iterations == 0,
    # and the weights are overwritten on every call of a cycle where (iterations + 1) % freq
    # == 0.  Worked by hand from those lines: SGD lr 1, gradient 1, cycles of 2 calls, m 0.5.
    v = fk.Variable([1.0])
    opt = fk.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=freq,
                 gradient_accumulation_steps=2)
    for call, (want_v, want_ema) in enumerate(want, start=1):
        opt.apply_gradients([(np.ones(1, np.float32), v)])
        close(v, [want_v])
        ema = opt.model_variables_moving_average[0]
        if want_ema is None:
            assert ema is None, call
        else:
            close(ema, [want_ema])
