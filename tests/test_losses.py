"""The distillation losses against the float64 NumPy reference of docs/methods.md."""

import keras
import numpy as np
import pytest
import reference  # tests/reference.py (pytest puts tests/ on sys.path)
import tensorflow as tf

import keras_cskd
from keras_cskd.losses import CSKD, CSWT, DIST, DKD, KD, LSKD, SKD

# Tolerances. The losses run in float32 and the reference in float64 on the same
# float32 inputs. rtol=1e-5 is about 100 float32 ulps. The atol is for losses
# near 0: terms such as `1 - cos` of nearly equal predictions lose their leading
# digits to cancellation, so their absolute float32 error is a few ulps of 1
# whatever the size of the loss, multiplied by the loss's constant factor
# (`factor` below: T^2 times its weights, 4 to 144). 4 ulps of 1 per unit of
# factor; the largest error seen beyond rtol is ~0.6 ulp (CSKD on identical
# rows, a loss of 7e-6 that is all epsilon).
RTOL = 1e-5
ATOL_PER_UNIT_FACTOR = 4 * float(np.finfo(np.float32).eps)

CSWT_REF = ("cswt", 2.0, 6.0)


# ----------------------------------------------------------------------------
# Inputs: float32 teacher logits, student logits and integer labels.
# ----------------------------------------------------------------------------


def _random_inputs(batch_size, num_classes, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(batch_size, num_classes)) * scale
    student = rng.normal(size=(batch_size, num_classes)) * scale
    labels = rng.integers(0, num_classes, size=batch_size)
    return teacher.astype("float32"), student.astype("float32"), labels


def _identical_rows(batch_size=6, num_classes=10, seed=1):
    teacher, student, _ = _random_inputs(1, num_classes, seed=seed)
    labels = np.full(batch_size, 3)
    return np.repeat(teacher, batch_size, 0), np.repeat(student, batch_size, 0), labels


def _shifted_rows(seed=8):
    """Identical predictions from logits shifted by a constant per row.

    The softmax is shift-invariant, so the per-sample cosines are equal in exact
    arithmetic, but in float32 they differ by an ulp or so: without its 1e-6
    threshold CSWT would scatter these rows between t_min and t_max.
    """
    teacher, student, _ = _random_inputs(1, 10, scale=1.0, seed=seed)
    shifts = np.float32([[0.0], [0.5], [3.0], [10.0], [-7.0], [30.0]])
    return np.repeat(teacher, 6, 0), student + shifts, np.zeros(6, "int64")


def _one_class_dominant(batch_size=8, num_classes=10, seed=2):
    """One class 6 logits above the rest in every row of both models.

    The teacher's dominant class is the label; the student's is the label on
    even rows and the next class on odd rows (a confident mistake).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=batch_size)
    student_classes = (labels + np.arange(batch_size) % 2) % num_classes
    teacher = rng.normal(size=(batch_size, num_classes))
    student = rng.normal(size=(batch_size, num_classes))
    teacher += 6.0 * np.eye(num_classes)[labels]
    student += 6.0 * np.eye(num_classes)[student_classes]
    return teacher.astype("float32"), student.astype("float32"), labels


INPUTS = {
    "B1_C10": lambda: _random_inputs(1, 10),
    "B2_C2": lambda: _random_inputs(2, 2, seed=3),
    "B7_C10": lambda: _random_inputs(7, 10, seed=4),
    "B64_C10": lambda: _random_inputs(64, 10, seed=5),
    "B5_C1000": lambda: _random_inputs(5, 1000, seed=6),
    "identical_rows": _identical_rows,
    "magnitude_1e3": lambda: _random_inputs(8, 10, scale=1e3, seed=7),
    "one_class_dominant": _one_class_dominant,
}


# ----------------------------------------------------------------------------
# Losses: (loss factory, reference, constant factor, compute_loss kwargs).
# ----------------------------------------------------------------------------


def _case(make, expected, factor, cswt_sees=np.float64, **kwargs):
    """`cswt_sees` maps logits to the logits a CSWT temperature is computed on."""
    return make, expected, factor, cswt_sees, kwargs


LOSSES = {
    "KD": _case(KD, lambda t, s, y: reference.kd(t, s, 4.0), 16),
    "KD_T2": _case(lambda: KD(2.0), lambda t, s, y: reference.kd(t, s, 2.0), 4),
    "KD_cswt": _case(
        lambda: KD(temperature=CSWT()),
        lambda t, s, y: reference.kd(t, s, CSWT_REF),
        36,
    ),
    "CSKD_fixed": _case(
        lambda: CSKD(cswt=None),
        lambda t, s, y: reference.cskd(t, s, 4.0, cswt_range=None),
        32,
    ),
    "CSKD_paper": _case(CSKD, lambda t, s, y: reference.cskd(t, s), 32 + 72),
    "CSKD_custom": _case(
        lambda: CSKD(temperature=3.0, cswt=CSWT(1.0, 5.0), alpha=1.5),
        lambda t, s, y: reference.cskd(t, s, 3.0, (1.0, 5.0), alpha=1.5),
        14 + 38,
    ),
    "CSKD_multi_level": _case(
        lambda: CSKD(multi_level=True),
        lambda t, s, y: reference.cskd(t, s, multi_level=True),
        3 * (32 + 72),
    ),
    "CSKD_cswt_only": _case(
        lambda: CSKD(temperature=CSWT(), cswt=None),
        lambda t, s, y: reference.cskd(t, s, CSWT_REF, cswt_range=None),
        72,
    ),
    "SKD": _case(SKD, lambda t, s, y: reference.skd(t, s, 4.0, 2.0), 16),
    "SKD_T2_m3": _case(
        lambda: SKD(temperature=2.0, multiplier=3.0),
        lambda t, s, y: reference.skd(t, s, 2.0, 3.0),
        4,
    ),
    "SKD_cswt": _case(
        lambda: SKD(temperature=CSWT()),
        lambda t, s, y: reference.skd(t, s, CSWT_REF, 2.0),
        36,
        cswt_sees=reference.skd_normalize,
    ),
    "LSKD": _case(LSKD, lambda t, s, y: reference.lskd(t, s, 2.0), 4),
    "LSKD_cswt": _case(
        lambda: LSKD(temperature=CSWT()),
        lambda t, s, y: reference.lskd(t, s, CSWT_REF),
        36,
        cswt_sees=reference.lskd_standardize,
    ),
    "DKD_epoch1": _case(
        DKD, lambda t, s, y: reference.dkd(t, s, y, epoch=1), 16 * 9, epoch=1.0
    ),
    "DKD_epoch13": _case(
        DKD, lambda t, s, y: reference.dkd(t, s, y, epoch=13), 16 * 9, epoch=13.0
    ),
    "DKD_epoch40": _case(
        DKD, lambda t, s, y: reference.dkd(t, s, y, epoch=40), 16 * 9, epoch=40.0
    ),
    "DKD_no_epoch": _case(DKD, lambda t, s, y: reference.dkd(t, s, y), 16 * 9),
    "DKD_cswt": _case(
        lambda: DKD(temperature=CSWT(), alpha=0.5, beta=2.0, warmup_epochs=5),
        lambda t, s, y: reference.dkd(
            t, s, y, CSWT_REF, alpha=0.5, beta=2.0, warmup=5, epoch=3
        ),
        36 * 3,
        epoch=3.0,
    ),
    "DIST": _case(DIST, lambda t, s, y: reference.dist(t, s), 32),
    "DIST_weights": _case(
        lambda: DIST(temperature=2.0, beta=2.0, gamma=0.5),
        lambda t, s, y: reference.dist(t, s, 2.0, beta=2.0, gamma=0.5),
        10,
    ),
    "DIST_cswt": _case(
        lambda: DIST(temperature=CSWT()),
        lambda t, s, y: reference.dist(t, s, CSWT_REF),
        72,
    ),
}

LABEL_FREE = {
    "KD": KD,
    "CSKD": CSKD,
    "SKD": SKD,
    "LSKD": LSKD,
    "DIST": DIST,
}

# One instance of every class and every temperature kind, for the generic tests.
ALL_LOSSES = {
    "KD": KD,
    "KD_cswt": lambda: KD(temperature=CSWT(1.5, 5.0)),
    "CSKD": CSKD,
    "CSKD_fixed": lambda: CSKD(cswt=None, alpha=1.0),
    "CSKD_cswt_only": lambda: CSKD(temperature=CSWT(), cswt=None),
    "SKD": lambda: SKD(multiplier=3.0, normalize_student_ce=True),
    "SKD_cswt": lambda: SKD(temperature=CSWT()),
    "LSKD": LSKD,
    "LSKD_cswt": lambda: LSKD(temperature=CSWT()),
    "DKD": lambda: DKD(alpha=2.0, beta=6.0, warmup_epochs=10),
    "DKD_cswt": lambda: DKD(temperature=CSWT()),
    "DIST": lambda: DIST(beta=2.0, gamma=3.0),
    "DIST_cswt": lambda: DIST(temperature=CSWT()),
}


def _compute(loss, teacher, student, labels, **kwargs):
    if loss.requires_labels:
        kwargs["labels"] = labels
    return loss.compute_loss(teacher, student, **kwargs)


def _uses_cswt(loss):
    return isinstance(loss.temperature, CSWT) or getattr(loss, "cswt", None)


@pytest.mark.parametrize("inputs_name", list(INPUTS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_loss_matches_float64_reference(loss_name, inputs_name):
    make, expected_fn, factor, cswt_sees, kwargs = LOSSES[loss_name]
    teacher, student, labels = INPUTS[inputs_name]()
    loss = make()
    if _uses_cswt(loss):
        # CSWT divides by the spread d of the per-sample cosines, so float32
        # cosines (good to ~1e-7) give temperatures good to ~4e-7 / d: the
        # inputs must have d below the 1e-6 threshold (t_min everywhere) or
        # large enough for a 1e-5 comparison to be meaningful.
        spread = reference.cswt_spread(cswt_sees(teacher), cswt_sees(student))
        assert spread < 1e-7 or spread > 0.05, f"ill-conditioned CSWT: d={spread}"
    value = _compute(loss, teacher, student, labels, **kwargs)
    expected = expected_fn(teacher, student, labels)
    assert np.isfinite(expected)
    np.testing.assert_allclose(
        float(value), expected, rtol=RTOL, atol=ATOL_PER_UNIT_FACTOR * factor
    )


# ----------------------------------------------------------------------------
# CSWT
# ----------------------------------------------------------------------------


def test_cswt_most_similar_gets_t_min_and_least_similar_t_max():
    teacher, student, _ = _random_inputs(9, 10, seed=11)
    temperatures = keras.ops.convert_to_numpy(CSWT(2.0, 6.0)(teacher, student))
    similarity = reference.cosine(
        reference.softmax(student), reference.softmax(teacher), axis=-1
    )
    assert temperatures.shape == (9, 1)
    assert temperatures[np.argmax(similarity), 0] == pytest.approx(2.0)
    assert temperatures[np.argmin(similarity), 0] == pytest.approx(6.0)
    np.testing.assert_allclose(
        temperatures, reference.cswt(teacher, student, 2.0, 6.0), rtol=1e-5
    )


@pytest.mark.parametrize(
    "inputs",
    [
        _random_inputs(1, 10),
        _random_inputs(1, 10, scale=1e3),
        _identical_rows(),
        _identical_rows(batch_size=64, num_classes=1000),
        _shifted_rows(),
        (np.zeros((4, 10), "float32"), np.zeros((4, 10), "float32"), None),
        (
            np.full((3, 5), 1e3, "float32"),
            np.tile(np.float32([[1e3, -1e3, 0.0, 5.0, 1e3]]), (3, 1)),
            None,
        ),
    ],
    ids=[
        "B1",
        "B1_1e3",
        "identical_rows",
        "identical_rows_C1000",
        "shifted_rows",
        "zeros",
        "1e3",
    ],
)
def test_cswt_is_t_min_for_one_sample_or_identical_rows(inputs):
    teacher, student, _ = inputs
    temperatures = keras.ops.convert_to_numpy(CSWT(2.0, 6.0)(teacher, student))
    assert np.all(np.isfinite(temperatures))
    np.testing.assert_array_equal(temperatures, np.full((len(teacher), 1), 2.0))


def test_cswt_is_finite_and_in_range_at_magnitude_1e3():
    teacher, student, _ = _random_inputs(16, 10, scale=1e3, seed=12)
    temperatures = keras.ops.convert_to_numpy(CSWT(2.0, 6.0)(teacher, student))
    assert np.all(np.isfinite(temperatures))
    assert np.all((temperatures >= 2.0) & (temperatures <= 6.0))


def test_no_gradient_flows_through_cswt():
    teacher, student, _ = _random_inputs(6, 10, seed=13)
    student = tf.constant(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        temperatures = CSWT(2.0, 6.0)(teacher, student)
        total = tf.reduce_sum(temperatures)
    gradient = tape.gradient(total, student)
    assert gradient is None or not np.any(gradient.numpy())


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [3.0, 1e3], ids=["normal", "magnitude_1e3"])
@pytest.mark.parametrize("loss_name", list(ALL_LOSSES))
def test_gradient_is_finite_nonzero_and_only_reaches_the_student(loss_name, scale):
    teacher, student, labels = _random_inputs(6, 10, scale=scale, seed=14)
    teacher, student = tf.constant(teacher), tf.constant(student)
    loss = ALL_LOSSES[loss_name]()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([teacher, student])
        value = _compute(loss, teacher, student, labels, epoch=5.0)
    student_gradient = tape.gradient(value, student)
    teacher_gradient = tape.gradient(value, teacher)
    assert np.isfinite(value.numpy())
    assert student_gradient is not None
    assert np.all(np.isfinite(student_gradient.numpy()))
    assert np.any(student_gradient.numpy() != 0)
    assert teacher_gradient is None or not np.any(teacher_gradient.numpy())


@pytest.mark.parametrize("loss_name", ["SKD", "LSKD", "DIST", "CSKD", "DKD"])
def test_gradient_is_finite_for_degenerate_logits(loss_name):
    # Equal logits in a row (zero std), identical rows (constant columns), a
    # batch of one, saturated softmaxes: the square roots and logs stay finite.
    rows = np.float32([[0.0] * 5, [1e3, -1e3, 0.0, 0.0, 0.0]])
    for teacher, student in [
        (rows, rows[::-1].copy()),
        (np.repeat(rows[:1], 3, 0), np.repeat(rows[:1], 3, 0)),
        (rows[1:], rows[1:] * 0.5),
    ]:
        teacher, student = tf.constant(teacher), tf.constant(student)
        labels = np.zeros(len(teacher), "int64")
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = _compute(ALL_LOSSES[loss_name](), teacher, student, labels)
        gradient = tape.gradient(value, student)
        assert np.isfinite(value.numpy())
        assert np.all(np.isfinite(gradient.numpy()))


# ----------------------------------------------------------------------------
# CSKD's orientation
# ----------------------------------------------------------------------------


def _row_wise_cosine_term(teacher, student, temperature=4.0, alpha=2.0):
    """CSKD with the axis convention transposed: one cosine per sample."""
    per_sample = reference.cosine(
        reference.softmax(student, temperature),
        reference.softmax(teacher, temperature),
        axis=1,
    )
    return alpha * temperature**2 * (1.0 - per_sample.mean())


def test_cskd_compares_batch_predictions_per_class_not_rows():
    # Each student row is the teacher row scaled: the same per-sample ranking,
    # but the columns P[:, c] disagree across the batch.
    teacher, _, _ = _random_inputs(6, 4, scale=1.0, seed=15)
    student = teacher * np.float32([[0.2], [3.0], [0.5], [4.0], [1.0], [6.0]])
    value = float(CSKD(cswt=None).compute_loss(teacher, student))
    column_wise = reference.cskd(teacher, student, 4.0, cswt_range=None)
    row_wise = _row_wise_cosine_term(teacher, student)
    np.testing.assert_allclose(
        value, column_wise, rtol=RTOL, atol=ATOL_PER_UNIT_FACTOR * 32
    )
    assert abs(column_wise - row_wise) > 0.1 * max(column_wise, row_wise)


def test_cskd_is_batch_wise():
    # A per-sample loss of a batch is the mean of its halves' losses; CSKD is not.
    teacher, student, _ = _random_inputs(8, 10, seed=16)
    loss = CSKD(cswt=None)
    whole = float(loss.compute_loss(teacher, student))
    halves = [
        float(loss.compute_loss(teacher[h], student[h]))
        for h in (slice(0, 4), slice(4, 8))
    ]
    assert abs(whole - np.mean(halves)) > 1e-3


# ----------------------------------------------------------------------------
# DKD details
# ----------------------------------------------------------------------------


def test_dkd_one_hot_and_soft_labels_use_the_argmax():
    teacher, student, labels = _random_inputs(8, 10, seed=17)
    one_hot = np.eye(10, dtype="float32")[labels]
    soft = 0.7 * one_hot + 0.03
    loss = DKD()
    expected = float(loss.compute_loss(teacher, student, labels=labels))
    for other in (one_hot, soft, labels[:, None], labels.astype("float32")):
        np.testing.assert_allclose(
            float(loss.compute_loss(teacher, student, labels=other)),
            expected,
            rtol=1e-6,
        )


def test_dkd_warms_up_linearly_with_an_epoch_variable():
    teacher, student, labels = _random_inputs(8, 10, seed=18)
    loss = DKD(warmup_epochs=20)
    full = float(loss.compute_loss(teacher, student, labels=labels))
    epoch = tf.Variable(1.0, trainable=False)
    for number, factor in [(1.0, 0.05), (10.0, 0.5), (20.0, 1.0), (35.0, 1.0)]:
        epoch.assign(number)
        value = float(loss.compute_loss(teacher, student, labels=labels, epoch=epoch))
        np.testing.assert_allclose(value, factor * full, rtol=1e-6)


def test_dkd_with_two_classes_is_kd():
    # With C = 2 the non-target distribution is a single class: NCKD = 0, and
    # TCKD is KD itself.
    teacher, student, labels = _random_inputs(8, 2, seed=19)
    dkd = float(DKD(alpha=1.0).compute_loss(teacher, student, labels=labels))
    kd = float(KD(4.0).compute_loss(teacher, student))
    np.testing.assert_allclose(dkd, kd, rtol=1e-5)


# ----------------------------------------------------------------------------
# SKD's cross-entropy logits
# ----------------------------------------------------------------------------


def test_student_logits_for_ce():
    _, student, _ = _random_inputs(4, 10, seed=20)
    normalised = SKD(multiplier=3.0, normalize_student_ce=True).student_logits_for_ce(
        student
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalised),
        reference.skd_normalize(student, 3.0),
        rtol=1e-5,
        atol=1e-5,
    )
    for loss in (SKD(), KD(), CSKD(), LSKD(), DKD(), DIST()):
        assert loss.student_logits_for_ce(student) is student


# ----------------------------------------------------------------------------
# Graph mode and XLA
# ----------------------------------------------------------------------------


@pytest.mark.large
@pytest.mark.parametrize("loss_name", ["KD_cswt", "CSKD", "LSKD", "DKD", "DIST"])
def test_loss_traces_under_xla(loss_name):
    teacher, student, labels = _random_inputs(6, 10, seed=21)
    loss = ALL_LOSSES[loss_name]()
    epoch = tf.Variable(4.0, trainable=False)
    compiled = tf.function(
        lambda t, s, y: _compute(loss, t, s, y, epoch=epoch), jit_compile=True
    )
    np.testing.assert_allclose(
        float(compiled(teacher, student, labels)),
        float(_compute(loss, teacher, student, labels, epoch=epoch)),
        rtol=1e-5,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------
# Serialization
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", list(ALL_LOSSES))
def test_config_round_trip(loss_name):
    loss = ALL_LOSSES[loss_name]()
    teacher, student, labels = _random_inputs(5, 10, seed=22)
    expected = float(_compute(loss, teacher, student, labels))

    from_config = type(loss).from_config(loss.get_config())
    serialized = keras.saving.serialize_keras_object(loss)
    deserialized = keras.saving.deserialize_keras_object(serialized)

    for restored in (from_config, deserialized):
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()
        assert restored.temperature == loss.temperature
        np.testing.assert_allclose(
            float(_compute(restored, teacher, student, labels)), expected, rtol=1e-6
        )


def test_get_config_returns_every_init_argument():
    import inspect

    for make in ALL_LOSSES.values():
        loss = make()
        parameters = set(inspect.signature(type(loss).__init__).parameters) - {"self"}
        assert set(loss.get_config()) == parameters, type(loss).__name__


# ----------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [KD, CSKD, SKD, LSKD, DKD, DIST])
@pytest.mark.parametrize("temperature", [-1.0, 0.0, "4"])
def test_bad_temperature_is_refused(loss_class, temperature):
    with pytest.raises(ValueError, match="temperature"):
        loss_class(temperature=temperature)


@pytest.mark.parametrize(
    "t_min, t_max", [(6.0, 2.0), (0.0, 2.0), (-1.0, 2.0)], ids=["swapped", "0", "<0"]
)
def test_bad_cswt_range_is_refused(t_min, t_max):
    with pytest.raises(ValueError, match="t_min <= t_max"):
        CSWT(t_min=t_min, t_max=t_max)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SKD(multiplier=0.0),
        lambda: DKD(beta=-1.0),
        lambda: DKD(warmup_epochs=-5),
        lambda: DIST(gamma=-1.0),
        lambda: CSKD(cswt=4.0),
    ],
    ids=["skd_multiplier", "dkd_beta", "dkd_warmup", "dist_gamma", "cskd_cswt"],
)
def test_bad_weights_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("loss_name", list(ALL_LOSSES))
def test_class_count_mismatch_is_refused(loss_name):
    teacher, _, labels = _random_inputs(4, 10)
    _, student, _ = _random_inputs(4, 7)
    with pytest.raises(ValueError, match="class counts differ"):
        _compute(ALL_LOSSES[loss_name](), teacher, student, labels)


def test_dkd_without_labels_is_refused():
    teacher, student, _ = _random_inputs(4, 10)
    with pytest.raises(ValueError, match="needs the labels"):
        DKD().compute_loss(teacher, student)


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, loss_class",
    [
        ("kd", KD),
        ("CSKD", CSKD),
        ("skd", SKD),
        ("lskd", LSKD),
        ("dkd", DKD),
        ("dist", DIST),
    ],
)
def test_registry_builds_each_loss(name, loss_class):
    assert name.lower() in keras_cskd.losses.names()
    assert type(keras_cskd.losses.get(name)) is loss_class
    assert keras_cskd.losses.get(name, temperature=3.0).temperature == 3.0


def test_registry_unknown_name_lists_the_known_ones():
    with pytest.raises(
        ValueError,
        match="Known distillation methods: attention_transfer, crd, cskd, ctkd, dist",
    ):
        keras_cskd.losses.get("hints")


# ----------------------------------------------------------------------------
# Inside Keras's own Distiller
# ----------------------------------------------------------------------------


def _tiny_model(seed, num_classes=5):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(num_classes)], name=f"model_{seed}"
    )


@pytest.mark.parametrize("loss_name", list(LABEL_FREE))
def test_runs_inside_keras_distiller(loss_name):
    rng = np.random.default_rng(23)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 5, size=8)
    teacher, student = _tiny_model(1), _tiny_model(2)
    loss = LABEL_FREE[loss_name]()
    expected = float(loss.compute_loss(teacher(x), student(x, training=True)))

    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=loss,
        student_loss_weight=0.0,
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy"
    )
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_allclose(
        history.history["distillation_loss"][0], expected, rtol=1e-5, atol=1e-5
    )


# ----------------------------------------------------------------------------
# TwoViewCSKD: the CSKD code's objective on a weak and a strong view
# ----------------------------------------------------------------------------


def _two_views(inputs_name):
    """The weak view is INPUTS[inputs_name]; the strong view its logits plus
    noise of the same shape (same labels)."""
    teacher, student, labels = INPUTS[inputs_name]()
    rng = np.random.default_rng(30)
    noise = rng.normal(size=(2, *teacher.shape)).astype("float32")
    return teacher, student, teacher + noise[0], student + noise[1], labels


@pytest.mark.parametrize("inputs_name", list(INPUTS))
def test_two_view_cskd_matches_float64_reference(inputs_name):
    t_weak, s_weak, t_strong, s_strong, _ = _two_views(inputs_name)
    spread = reference.cswt_spread(t_weak, s_weak)
    assert spread < 1e-7 or spread > 0.05, f"ill-conditioned CSWT: d={spread}"
    terms = keras_cskd.losses.TwoViewCSKD().terms(
        (t_weak, t_strong), (s_weak, s_strong)
    )
    expected = reference.two_view_cskd(t_weak, s_weak, t_strong, s_strong)
    for name, value, reference_value in zip(
        ("kd", "class_gram", "batch_gram"),
        (terms["kd"], terms["class_gram"], terms["batch_gram"]),
        expected,
        strict=True,
    ):
        np.testing.assert_allclose(
            float(value),
            reference_value,
            rtol=RTOL,
            atol=ATOL_PER_UNIT_FACTOR * (32 + 72),
            err_msg=name,
        )


def test_two_view_cskd_weights_weak_terms_by_the_median_fractions():
    """With two equal views: an odd batch of 7 has 4 samples at or below the
    median, and 10 classes have 5, so kd = (1 + 4/7) CSKD, the Gram terms 4/7
    and 5/10 of the weak view's."""
    teacher, student, _ = _random_inputs(7, 10, seed=4)
    terms = keras_cskd.losses.TwoViewCSKD().terms(
        (teacher, teacher), (student, student)
    )
    cskd = float(CSKD().compute_loss(teacher, student))
    pt, ps = reference.softmax(teacher, 4.0), reference.softmax(student, 4.0)
    per_sample = reference.cswt(teacher, student)
    pt_i, ps_i = (
        reference.softmax(teacher, per_sample),
        reference.softmax(student, per_sample),
    )
    class_gram = reference.class_gram_distance(pt, ps) + reference.class_gram_distance(
        pt_i, ps_i
    )
    batch_gram = reference.batch_gram_distance(pt, ps) + reference.batch_gram_distance(
        pt_i, ps_i
    )
    assert float(terms["kd"]) == pytest.approx((1 + 4 / 7) * cskd, rel=1e-5)
    assert float(terms["class_gram"]) == pytest.approx(0.5 * class_gram, rel=1e-5)
    assert float(terms["batch_gram"]) == pytest.approx(4 / 7 * batch_gram, rel=1e-5)


def test_two_view_cskd_total_is_the_sum_of_its_terms_and_round_trips():
    t_weak, s_weak, t_strong, s_strong, labels = _two_views("B64_C10")
    loss = keras_cskd.losses.TwoViewCSKD(
        temperature=3.0, cswt=CSWT(1.0, 5.0), alpha=1.5
    )
    teacher, student = (t_weak, t_strong), (s_weak, s_strong)
    total = float(loss.compute_loss(teacher, student, labels=labels))
    assert total == pytest.approx(float(sum(loss.terms(teacher, student).values())))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert restored.get_config() == loss.get_config()
    assert float(restored.compute_loss(teacher, student)) == pytest.approx(total)
    assert keras_cskd.losses.get("two_view_cskd").num_views == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: keras_cskd.losses.TwoViewCSKD(cswt=None), "CSWT `cswt`"),
        (lambda: keras_cskd.losses.TwoViewCSKD(temperature=CSWT()), "float"),
    ],
)
def test_two_view_cskd_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_two_view_cskd_refuses_a_single_view():
    teacher, student, _ = _random_inputs(4, 10)
    with pytest.raises(ValueError, match="two views"):
        keras_cskd.losses.TwoViewCSKD().compute_loss(teacher, student)
