"""MLKD and MLKD+LS: the loss against the reference code, its clean options,
the recipes, and training on two views (reference step, replicas, JAX).

The fixture `golden/mlkd.npz` was made once by `golden/make_mlkd.py` from
Jin-Ying/Multi-Level-Logit-Distillation @ 5ee473f and
sunshangquan/logit-standardization-KD @ f6e5aa5; torch is not needed here.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import builders, losses
from keras_cskd import config as config_module
from keras_cskd.distiller import cross_entropy

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "configs" / "cifar100_distill.py"
with np.load(Path(__file__).parent / "golden" / "mlkd.npz") as _golden:
    GOLDEN = dict(_golden)
# method: (loss, CE weight, loss weight), as make_mlkd.py's SETTINGS.
METHODS = {
    "mlkd": (lambda: losses.MLKD(), 0.1, 0.9),
    "mlkd_ls": (lambda: losses.MLKD(2.0, standardize=True), 0.1, 9.0),
}


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


def _reference_check(prefix, method, expected):
    """Our terms, total and gradient on the fixture's logits `prefix*`
    against `expected(name)` (the reference's)."""
    fixture = {k[len(prefix) :]: v for k, v in GOLDEN.items() if k.startswith(prefix)}
    make_loss, ce_weight, weight = METHODS[method]
    teacher = (fixture["t_weak"], fixture["t_strong"])
    student = [tf.Variable(fixture["s_weak"]), tf.Variable(fixture["s_strong"])]
    labels = GOLDEN["case1_labels"] if prefix == "constant_" else fixture["labels"]
    with tf.GradientTape() as tape:
        terms = make_loss().terms(teacher, student)
        ce = ce_weight * sum(
            keras.ops.mean(cross_entropy(labels, view)) for view in student
        )
        total = ce + weight * (terms["kd"] + terms["class_gram"] + terms["batch_gram"])
    for ours, theirs in (
        (ce, "loss_ce"),
        (weight * terms["kd"], "loss_kd"),
        (weight * terms["class_gram"], "loss_cc"),
        (weight * terms["batch_gram"], "loss_bc"),
        (total, "total"),
    ):
        assert float(ours) == pytest.approx(float(expected(theirs)), rel=1e-5), theirs
    for gradient, view in zip(
        tape.gradient(total, student), ("weak", "strong"), strict=True
    ):
        assert _relative_error(gradient, expected(f"grad_s_{view}")) < 1e-5, view


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("case", range(int(GOLDEN["cases"])))
def test_loss_and_gradient_equal_the_reference_code(method, case):
    """Four shapes: (64, 100), (8, 10), an odd batch (7, 5), a sharp teacher."""
    prefix = f"case{case}_"
    _reference_check(prefix, method, lambda name: GOLDEN[f"{method}_{prefix}{name}"])


def test_mlkd_ls_with_constant_rows_equals_the_reference_code():
    """A row of equal logits standardises to 0 with a finite gradient."""
    _reference_check("constant_", "mlkd_ls", lambda name: GOLDEN[f"constant_{name}"])


# An independent float64 NumPy MLKD, for the clean options.
def _softmax(z, temperature):
    z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kd(t, s, temperature):
    pt, ps = _softmax(t, temperature), _softmax(s, temperature)
    return temperature**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))


def _gram(t, s, temperature, class_level):
    pt, ps = _softmax(t, temperature), _softmax(s, temperature)
    if class_level:
        return np.sum((pt.T @ pt - ps.T @ ps) ** 2) / t.shape[1]
    return np.sum((pt @ pt.T - ps @ ps.T) ** 2) / t.shape[0]


def _fraction(values):
    return np.mean(values <= np.percentile(values, 50))


def _numpy_mlkd(t_weak, s_weak, t_strong, s_strong, masks, weak_at_2_6, strong_gram):
    probs = _softmax(t_weak, 1.0)
    f, g = (_fraction(probs.max(1)), _fraction(probs.sum(0))) if masks else (1, 1)
    total = 0.0
    for position, temperature in enumerate((4.0, 3.0, 5.0, 2.0, 6.0)):
        weak = (t_weak, s_weak)
        other = weak if weak_at_2_6 and position >= 3 else (t_strong, s_strong)
        total += f * _kd(*weak, temperature) + _kd(*other, temperature)
        total += g * _gram(*weak, temperature, True)
        total += f * _gram(*weak, temperature, False)
        if strong_gram:
            total += _gram(*other, temperature, True)
            total += f * _gram(t_strong, s_strong, temperature, False)
    return total


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"confidence_masks": False},
        {"weak_view_at_2_and_6": False},
        {"strong_gram_terms": True},
        {"confidence_masks": False, "weak_view_at_2_and_6": False},
    ],
)
def test_each_option_computes_its_formula(options):
    logits = [
        GOLDEN[f"case1_{k}"] for k in ("t_weak", "s_weak", "t_strong", "s_strong")
    ]
    expected = _numpy_mlkd(
        *[z.astype(np.float64) for z in logits],
        masks=options.get("confidence_masks", True),
        weak_at_2_6=options.get("weak_view_at_2_and_6", True),
        strong_gram=options.get("strong_gram_terms", False),
    )
    loss = losses.MLKD(**options)
    ours = loss.compute_loss((logits[0], logits[2]), (logits[1], logits[3]))
    assert float(ours) == pytest.approx(expected, rel=1e-5)


def test_masks_scale_the_weak_terms_by_about_a_half():
    logits = [
        GOLDEN[f"case0_{k}"] for k in ("t_weak", "s_weak", "t_strong", "s_strong")
    ]
    teacher, student = (logits[0], logits[2]), (logits[1], logits[3])
    masked = losses.MLKD().terms(teacher, student)
    unmasked = losses.MLKD(confidence_masks=False).terms(teacher, student)
    for name in ("class_gram", "batch_gram"):  # 64 samples and 100 classes: 1/2
        assert float(masked[name]) == pytest.approx(0.5 * float(unmasked[name]))


def test_the_strong_view_at_t_2_and_6_is_ignored_by_default():
    weak, strong = GOLDEN["case1_t_weak"], GOLDEN["case1_t_strong"]
    student_weak = GOLDEN["case1_s_weak"]
    # Strong student logits that differ only matter through T 4, 3 and 5.
    base = losses.MLKD().compute_loss((weak, strong), (student_weak, strong))
    clean = losses.MLKD(weak_view_at_2_and_6=False)
    assert float(clean.compute_loss((weak, strong), (student_weak, strong))) < float(
        base
    )


def test_identical_teacher_and_student_views_give_zero():
    views = (GOLDEN["case1_t_weak"], GOLDEN["case1_t_strong"])
    for options in ({}, {"standardize": True, "strong_gram_terms": True}):
        assert float(
            losses.MLKD(**options).compute_loss(views, views)
        ) == pytest.approx(0.0, abs=1e-6)


def test_one_view_is_refused_with_the_fix():
    logits = GOLDEN["case1_t_weak"]
    with pytest.raises(ValueError, match="two views.*data.two_views=True"):
        losses.MLKD().compute_loss(logits, logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": losses.CSWT()}, "float `temperature`"),
        ({"temperature": 0.0}, "temperature"),
        ({"standardize": "True"}, "standardize"),
        ({"confidence_masks": 1}, "confidence_masks"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.MLKD(**kwargs)


def test_config_round_trip_and_registry():
    loss = losses.MLKD(2.0, standardize=True, strong_gram_terms=True)
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert again.get_config() == loss.get_config()
    assert losses.get_class("mlkd") is losses.MLKD and losses.MLKD.num_views == 2


@pytest.mark.parametrize(
    "spec, loss, weights, schedule",
    [
        # mlkd_engine_cfg.py: KD T 4, CE 0.1, KD 0.9; MLKD's own
        # configs/cifar100/ours/res32x4_res8x4.yaml: 240 epochs at 0.025.
        (
            "mlkd,resnet32x4,resnet8x4",
            "MLKD(temperature=4.0, standardize=False, confidence_masks=True, "
            "weak_view_at_2_and_6=True, strong_gram_terms=False)",
            (0.1, 0.9),
            (240, 0.025),
        ),
        # --logit-stand --base-temp 2 --kd-weight 9 (the log of the 78.28)
        (
            "mlkd_ls,resnet32x4,resnet8x4",
            "MLKD(temperature=2.0, standardize=True, confidence_masks=True, "
            "weak_view_at_2_and_6=True, strong_gram_terms=False)",
            (0.1, 9.0),
            (480, 0.025),
        ),
        (  # the log behind 75.22: T 2, weight 6; its config: rate 0.01
            "mlkd_ls,vgg13,vgg8",
            "MLKD(temperature=2.0, standardize=True, confidence_masks=True, "
            "weak_view_at_2_and_6=True, strong_gram_terms=False)",
            (0.1, 6.0),
            (480, 0.01),
        ),
        ("mlkd,resnet32x4,shufflenetv2", None, (0.1, 0.9), (960, 0.01)),
    ],
)
def test_the_recipes_resolve_to_the_reference_settings(spec, loss, weights, schedule):
    config = config_module.load_config(f"{DISTILL}:{spec}")
    config_module.validate(config)
    if loss is not None:
        assert repr(builders.build_loss(config.loss)) == loss
    assert (config.ce_weight, config.distillation_loss_weight) == weights
    assert (config.epochs, config.optimizer.learning_rate) == schedule
    assert config.data.two_views and config.view_weights == (1.0, 1.0)
    assert config.data.strong_augmentation == "cifar_randaugment"
    assert (config.data.augmentation, config.data.batch_size) == ("cifar_crop_flip", 64)
    assert config.optimizer.milestones == (150, 180, 210)
    assert (config.optimizer.name, config.optimizer.weight_decay) == ("torch_sgd", 5e-4)


def test_mlkd_without_two_views_is_refused_by_validation():
    config = config_module.load_config(f"{DISTILL}:mlkd,resnet32x4,resnet8x4")
    config.data.two_views = False
    with pytest.raises(ValueError, match="mlkd needs data.two_views"):
        config_module.validate(config)


@pytest.mark.large
def test_three_sgd_steps_equal_the_reference_training():
    """resnet8 from sgd_steps.npz's weights and batch, MLKD's training step."""
    import test_reference_training as steps

    keras.utils.set_random_seed(0)
    student = keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))
    steps._port_initial_weights(student)
    teacher = keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        losses.MLKD(),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
        view_weights=(1.0, 1.0),
    )
    schedule = keras_cskd.optimizers.EpochStepDecay(0.1, 1, milestones=(1, 2))
    distiller.compile(
        optimizer=keras_cskd.optimizers.TorchSGD(
            schedule, momentum=0.9, weight_decay=5e-4
        )
    )
    variables = steps._variables(student, "initial/")
    snapshots = steps._Snapshots(variables)
    distiller.fit(
        steps._batch("two_view_cskd"),
        epochs=3,
        steps_per_epoch=1,
        callbacks=[snapshots],
        verbose=0,
    )
    for step, ours in enumerate(snapshots.steps, start=1):
        for torch_name, variable in variables.items():
            expected = GOLDEN[f"mlkd/step{step}/{torch_name}"]
            actual = steps._torch_layout(ours[torch_name], variable)
            initial = steps.STEPS[f"initial/{torch_name}"]
            assert _relative_error(actual, expected) < 1e-5, (step, torch_name)
            if not torch_name.endswith("running_mean"):
                assert _relative_error(actual - initial, expected - initial) < 1e-3, (
                    step,
                    torch_name,
                )


@pytest.mark.large
@pytest.mark.parametrize("method", list(METHODS))
def test_a_recipe_runs_a_few_steps_end_to_end(method, tmp_path):
    import tensorflow_datasets as tfds

    from keras_cskd import training

    config = config_module.load_config(f"{DISTILL}:{method},resnet32x4,resnet8x4")
    config.model = "resnet8"  # the smallest student keeps this test quick
    teacher = keras_cskd.models.get("resnet8", 100, (32, 32, 3))
    teacher.save(tmp_path / "teacher.keras")
    config.teacher.path = str(tmp_path / "teacher.keras")
    config.teacher.allow_untrained = True  # an untrained teacher, on mock data
    config.epochs, config.data.batch_size = 1, 8
    config.verbose = "0"
    config.export.formats = ""
    with tfds.testing.mock_data(num_examples=16):
        summary = training.run(config, tmp_path / "run")
    assert summary["last_epoch"] == 1
    keras.saving.load_model(tmp_path / "run" / "student.keras")


@pytest.mark.large
def test_mirrored_two_replicas_equal_one_device(monkeypatch):
    """test_distributed's BatchNorm-free digits student on two views; the
    job's `two_view_cskd` name is what makes it train on two views."""
    import distributed_job
    from test_distributed import assert_same_training, two_cpus

    monkeypatch.setattr(distributed_job, "build_loss", lambda name: losses.MLKD())
    single = distributed_job.train("two_view_cskd", tf.distribute.get_strategy())
    mirrored = distributed_job.train("two_view_cskd", two_cpus())
    assert_same_training(single, mirrored)


def _backend_run(inputs, backend):
    out = inputs.with_name(f"mlkd_{backend}.npz")
    script = Path(__file__).with_name("mlkd_backend_run.py")
    command = [sys.executable, str(script), f"--backend={backend}"]
    command += [f"--inputs={inputs}", f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as arrays:
        return dict(arrays)


@pytest.mark.large
def test_jax_trains_like_tensorflow_and_computes_the_reference_loss(tmp_path):
    import backend_run
    from test_backends import skip_unless_installed

    skip_unless_installed("jax")
    inputs = tmp_path / "inputs.npz"
    backend_run.make_inputs(inputs)
    import mlkd_backend_run

    with np.load(inputs) as arrays:  # TensorFlow in this process, JAX in its own
        runs = {"tensorflow": mlkd_backend_run.train(dict(arrays))}
    total, (grad_weak, grad_strong) = mlkd_backend_run.loss_and_gradient()
    runs["tensorflow"].update(
        loss=total, grad_s_weak=grad_weak, grad_s_strong=grad_strong
    )
    runs["jax"] = _backend_run(inputs, "jax")
    assert str(runs["jax"]["backend"]) == "jax"
    for run in runs.values():  # the value and gradient of golden case 1
        assert float(run["loss"]) == pytest.approx(
            float(GOLDEN["mlkd_case1_total"]), rel=1e-5
        )
        for view in ("weak", "strong"):
            expected = GOLDEN[f"mlkd_case1_grad_s_{view}"]
            assert _relative_error(run[f"grad_s_{view}"], expected) < 1e-5
    # Relative to the largest of each weight (float32 sums in another order).
    weights = [backend_run.read_weights(run, "student") for run in runs.values()]
    with np.load(inputs) as arrays:
        initial = backend_run.read_weights(arrays, "student")
    moved = max(_relative_error(a, b) for a, b in zip(weights[0], initial, strict=True))
    assert moved > 100 * 1e-4  # so that matching says something
    for index, (tf_weight, jax_weight) in enumerate(zip(*weights, strict=True)):
        assert _relative_error(jax_weight, tf_weight) < 1e-4, index
    for key in runs["tensorflow"]:
        if key.startswith("history_"):
            assert _relative_error(runs["jax"][key], runs["tensorflow"][key]) < 1e-4, (
                key
            )


@pytest.mark.large
@pytest.mark.parametrize("method", ["mlkd", "mlkd_ls"])
def test_every_pair_of_the_recipes_parses_and_validates(method):
    from test_cifar import distill_module

    for teacher, student in distill_module().PAIRS:
        config = config_module.load_config(f"{DISTILL}:{method},{teacher},{student}")
        config_module.validate(config)
        assert config.epochs in (240, 480, 960) and config.loss.method == "mlkd"
