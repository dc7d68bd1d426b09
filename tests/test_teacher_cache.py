"""The exact teacher-logit cache for augmented training (`data.teacher_cache`):
the variant space, exactness of the cached logits, training identical to the
online teacher (on one device and on two replicas), one cache for several
runs, and its faults (stale, truncated, interrupted, corrupt caches; bad
arguments on its command line)."""

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import config as config_module
from keras_cskd import data, distribute, files, training
from keras_cskd.data import augment, teacher_cache

ROOT = Path(__file__).resolve().parents[1]
CIFAR_NORMALIZATION = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def teacher():
    return keras.saving.load_model(ROOT / "saved_models" / "digits_teacher.keras")


@pytest.fixture
def teacher_path(tmp_path):
    """A copy of the digits teacher: the cache is written beside it."""
    path = tmp_path / "teacher.keras"
    shutil.copy(ROOT / "saved_models" / "digits_teacher.keras", path)
    return path


def quiet(line):
    del line


def build(teacher_path, teacher, digits, dtype="float32", **options):
    augmentation = augment.digits_augmentation()
    key = teacher_cache.cache_key(teacher_path, digits, augmentation, dtype)
    path = teacher_cache.default_path(teacher_path, digits.name, dtype)
    options.setdefault("progress", quiet)
    teacher_cache.build(path, key, teacher, digits, augmentation, **options)
    return path, key


@pytest.mark.parametrize(
    "augmentation, shape, size",
    [
        (augment.digits_augmentation(), (8, 8, 1), 9),
        (
            augment.cifar_augmentation(normalization=CIFAR_NORMALIZATION),
            (32, 32, 3),
            162,
        ),
    ],
)
def test_the_variants_drawn_make_the_online_images(augmentation, shape, size):
    space = teacher_cache.variant_space(augmentation)
    assert space.size == size
    images = tf.random.stateless_normal((64, *shape), [1, 2])
    for step in range(3):
        seed = augment.fold_in([5, 0], step)
        variants = teacher_cache.draw_variants(augmentation, 64, seed)
        np.testing.assert_array_equal(
            space.apply(images, variants), augmentation.augment(images, seed)
        )
    offsets, flips = space.decode(tf.range(size))
    np.testing.assert_array_equal(space.index(offsets, flips), np.arange(size))


@pytest.mark.parametrize(
    "augmentation",
    [
        keras.layers.RandomFlip(),
        augment.cifar_strong_augmentation(CIFAR_NORMALIZATION),
        augment.RandomHorizontalFlip(),
    ],
)
def test_only_the_discrete_augmentations_have_a_variant_space(augmentation):
    with pytest.raises(ValueError, match="needs a discrete augmentation"):
        teacher_cache.variant_space(augmentation)


@pytest.mark.large
def test_cached_logits_are_the_teachers_on_each_variant(digits, teacher, teacher_path):
    logits = {}
    for dtype in teacher_cache.DTYPES:
        path, key = build(teacher_path, teacher, digits, dtype, batch_size=500)
        logits[dtype] = teacher_cache.load_logits(path, key)
        assert logits[dtype].shape == (1257, 9, 10)
    images, _ = data.to_numpy(digits.train)
    space = teacher_cache.variant_space(augment.digits_augmentation())
    rng = np.random.default_rng(0)
    examples = rng.integers(0, len(images), 300)
    variants = rng.integers(0, space.size, 300)
    expected = teacher(space.apply(images[examples], variants), training=False)
    expected = expected.numpy()
    scale = np.abs(expected).max()
    exact = np.abs(logits["float32"][examples, variants] - expected).max() / scale
    half = np.abs(logits["float16"][examples, variants] - expected).max() / scale
    print(f"float32 max error {exact:.2e}, float16 {half:.2e} (of max |logit|)")
    for dtype, itemsize in (("float32", 4), ("float16", 2)):
        # The disk size docs/BENCHMARKS.md computes: examples x variants x
        # classes x bytes, plus the .npy header.
        path = teacher_cache.default_path(teacher_path, "digits", dtype)
        assert path.stat().st_size - logits[dtype].offset == 1257 * 9 * 10 * itemsize
        assert logits[dtype].offset <= 128
    assert exact <= 1e-6
    assert half <= 2**-11 + 1e-6  # float16 rounding (half an ulp) and float32


@pytest.mark.large
def test_the_cached_pipeline_is_the_online_one_with_logits(
    digits, teacher, teacher_path
):
    path, key = build(teacher_path, teacher, digits)
    logits = teacher_cache.load_logits(path, key)
    augmentation = augment.digits_augmentation()
    cached = teacher_cache.pipeline(digits.train, logits, 64, augmentation, 1, epochs=2)
    online = data.pipeline(
        digits.train, 64, training=True, seed=1, augmentation=augmentation, epochs=2
    )
    batches = 0
    for (x, labels), (images, online_labels) in zip(cached, online, strict=True):
        np.testing.assert_array_equal(x["images"], images)
        np.testing.assert_array_equal(labels, online_labels)
        np.testing.assert_allclose(
            x["teacher_logits"], teacher(images, training=False), rtol=1e-5, atol=1e-5
        )
        batches += 1
    assert batches == 2 * 20


@pytest.mark.large
def test_training_with_the_cache_equals_training_with_the_teacher(
    digits, teacher, teacher_path
):
    path, key = build(teacher_path, teacher, digits)
    logits = teacher_cache.load_logits(path, key)
    augmentation = augment.digits_augmentation()
    weights = []
    for cached in (False, True):
        # tf.data's shuffle also reads TensorFlow's global seed: set it first.
        keras.utils.set_random_seed(0)
        if cached:
            train = teacher_cache.pipeline(
                digits.train, logits, 64, augmentation, seed=1, epochs=2
            )
        else:
            train = data.pipeline(
                digits.train, 64, True, 1, augmentation=augmentation, epochs=2
            )
        student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
        distiller = keras_cskd.Distiller(teacher, student, "cskd")
        distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        distiller.fit(train, epochs=2, steps_per_epoch=20, verbose=0)
        weights.append(student.get_weights())
    difference = max(np.abs(a - b).max() for a, b in zip(*weights, strict=True))
    print(f"largest weight difference, cache vs online teacher: {difference:.2e}")
    # The teacher runs in batches of 256 for the cache and 64 in the step;
    # oneDNN may round the last bit differently for different batch sizes.
    assert difference <= 1e-5


@pytest.mark.large
def test_a_stale_cache_is_refused_naming_the_teacher(digits, teacher, teacher_path):
    path, _ = build(teacher_path, teacher, digits)
    with open(teacher_path, "ab") as file:
        file.write(b"retrained")
    key = teacher_cache.cache_key(teacher_path, digits, augment.digits_augmentation())
    with pytest.raises(ValueError, match="stale: the teacher changed .*sha256"):
        teacher_cache.load_logits(path, key)


def test_a_build_runs_under_the_caches_lock_and_a_second_finds_it_done(
    digits, teacher, teacher_path, monkeypatch
):
    held, lines = [], []
    exclusive = teacher_cache.files.exclusive

    @contextlib.contextmanager
    def recorded(path):
        with exclusive(path):
            held.append(path)
            yield
            held.remove(path)

    def progress(line):
        lines.append((line, list(held)))

    monkeypatch.setattr(teacher_cache.files, "exclusive", recorded)
    path, _ = build(teacher_path, teacher, digits, progress=progress)
    lock = path.with_name(path.name + ".lock")
    assert lines and all(locks == [lock] for _, locks in lines)
    count = len(lines)
    build(teacher_path, teacher, digits, progress=progress)
    assert len(lines) == count  # the second build found it complete


def test_an_exclusive_lock_is_held_until_the_block_ends(tmp_path):
    lock = tmp_path / "cache.npy.lock"
    with files.exclusive(lock), open(lock) as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.large
def test_a_truncated_cache_is_refused(digits, teacher, teacher_path):
    path, key = build(teacher_path, teacher, digits)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 40)
    with pytest.raises(ValueError, match="truncated. Rebuild it with: python -m"):
        teacher_cache.load_logits(path, key)
    build(teacher_path, teacher, digits)  # a build replaces it
    assert teacher_cache.load_logits(path, key).shape == (1257, 9, 10)


@pytest.mark.large
def test_a_killed_build_resumes_and_ends_as_an_uninterrupted_one(
    digits, teacher, teacher_path, tmp_path
):
    class Killed(Exception):
        pass

    lines = []

    def killed_after_three_chunks(line):
        lines.append(line)
        if len(lines) == 3:
            raise Killed

    with pytest.raises(Killed):
        build(
            teacher_path,
            teacher,
            digits,
            chunk_size=128,
            progress=killed_after_three_chunks,
        )
    path, key = teacher_cache.default_path(teacher_path, "digits"), None
    key = teacher_cache.cache_key(teacher_path, digits, augment.digits_augmentation())
    with pytest.raises(ValueError, match="incomplete .*3 chunks"):
        teacher_cache.load_logits(path, key)  # an incomplete cache is never read
    resumed = []
    build(teacher_path, teacher, digits, chunk_size=128, progress=resumed.append)
    assert "resuming (3 done)" in resumed[0]
    assert sum("chunk" in line and "/10" in line for line in resumed) == 7
    other = tmp_path / "other" / "teacher.keras"
    other.parent.mkdir()
    shutil.copy(teacher_path, other)
    whole, _ = build(other, teacher, digits, chunk_size=128)
    np.testing.assert_array_equal(
        teacher_cache.load_logits(path, key), teacher_cache.load_logits(whole, key)
    )


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"strong_augmentation": augment.cifar_strong_augmentation()}, "two views"),
        ({"mixup_alpha": 0.2}, "mixup"),
    ],
)
def test_the_pipeline_refuses_two_views_and_mixup(digits, options, reason):
    logits = np.zeros((1257, 9, 10), np.float32)
    with pytest.raises(ValueError, match=f"cannot serve {reason}"):
        teacher_cache.pipeline(
            digits.train, logits, 64, augment.digits_augmentation(), **options
        )


def test_config_allows_the_cache_with_augment_only():
    config = config_module.default_config()
    config.data.cache_teacher_logits = True
    config.data.augmentation = "digits_shift"
    config_module.validate(config)
    for key, value in (("two_views", True), ("mixup_alpha", 0.2)):
        bad = config_module.default_config()
        bad.data.cache_teacher_logits = True
        bad.data[key] = value
        with pytest.raises(ValueError, match="continuous: no finite set of variants"):
            config_module.validate(bad)
    bad = config_module.default_config()
    bad.data.cache_dtype = "bfloat16"
    with pytest.raises(ValueError, match="cache_dtype must be float32 or float16"):
        config_module.validate(bad)


@pytest.mark.large
def test_train_builds_the_cache_beside_the_teacher(teacher_path, tmp_path):
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.epochs = 1
    config.verbose = "0"
    config.export.formats = ""
    config.teacher.path = str(teacher_path)
    config.data.update({"augmentation": "digits_shift", "cache_teacher_logits": True})
    config.data.cache_dtype = "float16"
    summary = training.run(config, tmp_path / "run")
    assert summary["last_epoch"] == 1
    cache = teacher_cache.default_path(teacher_path, "digits", "float16")
    assert cache.is_file() and Path(f"{cache}.json").is_file()


def train_from_cache(logits, teacher_path, strategy):
    """Two epochs of 10 steps of a digits student from the cache, batch 64,
    under `strategy`; returns the student's weights."""
    with strategy.scope():
        keras.utils.set_random_seed(0)  # tf.data's shuffle reads it too
        teacher = keras.saving.load_model(teacher_path)
        student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
        distiller = keras_cskd.Distiller(teacher, student, "cskd")
        distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    train = teacher_cache.pipeline(
        data.load("digits").train,
        logits,
        64,
        augment.digits_augmentation(),
        seed=1,
        epochs=2,
    )
    distiller.fit(train, epochs=2, steps_per_epoch=10, verbose=0)
    return student.get_weights()


@pytest.mark.large
def test_training_from_the_cache_on_two_replicas_equals_one_device(
    digits, teacher, teacher_path
):
    path, key = build(teacher_path, teacher, digits)
    logits = teacher_cache.load_logits(path, key)
    one = train_from_cache(logits, teacher_path, tf.distribute.get_strategy())
    # The process's one MirroredStrategy over conftest's two logical CPUs: a
    # second would clash with it (tensorflow/tensorflow#62790).
    mirrored = distribute.get_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2
    two = train_from_cache(logits, teacher_path, mirrored)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def cached_config(name, teacher_path):
    config = config_module.load_config(ROOT / "configs" / f"{name}.py")
    config.epochs = 1
    config.verbose = "0"
    config.export.formats = ""
    config.teacher.path = str(teacher_path)
    config.data.update({"augmentation": "digits_shift", "cache_teacher_logits": True})
    return config


@pytest.mark.large
def test_seeds_and_methods_on_one_teacher_share_one_cache_built_once(
    teacher_path, tmp_path, monkeypatch
):
    chunks = []
    chunk_logits = teacher_cache._chunk_logits

    def counted(*args):
        chunks.append(1)
        return chunk_logits(*args)

    monkeypatch.setattr(teacher_cache, "_chunk_logits", counted)
    seeds = training.main(
        cached_config("digits_cskd", teacher_path), tmp_path / "cskd", seeds=[0, 1, 2]
    )
    kd = training.main(cached_config("digits_kd", teacher_path), tmp_path / "kd")
    assert (seeds, kd) == (0, 0)
    assert len(chunks) == 5  # 1257 examples in chunks of 256, once
    caches = sorted(p.name for p in teacher_path.parent.glob("*.logits.npy"))
    assert caches == ["teacher.digits.train.float32.logits.npy"]


def corrupt(path, keep_header):
    """Overwrites the cache with noise of the same size (after the header)."""
    offset = np.load(path, mmap_mode="r").offset if keep_header else 0
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(np.random.default_rng(0).bytes(size - offset))
    # The check compares stat times, which tick coarsely (a few ms): move the
    # modification time on, as any later write would.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_cache_is_checked_once_and_again_after_a_change(
    digits, teacher, teacher_path, monkeypatch
):
    path, key = build(teacher_path, teacher, digits, chunk_size=256)
    hashed = []
    sha256_array = teacher_cache._sha256_array
    monkeypatch.setattr(
        teacher_cache,
        "_sha256_array",
        lambda rows: hashed.append(len(rows)) or sha256_array(rows),
    )
    teacher_cache.load_logits(path, key)
    assert hashed == [256, 256, 256, 256, 233]  # every chunk, the first time
    teacher_cache.load_logits(path, key)
    assert len(hashed) == 5  # recorded: not read again
    logits = np.load(path, mmap_mode="r+")
    logits[300, 4, 7] += 1.0  # one logit, in the second chunk
    logits.flush()
    del logits
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ValueError) as error:
        teacher_cache.load_logits(path, key)
    assert str(error.value) == (
        f"The teacher-logit cache {path} is corrupt: examples 256-511 (chunk 2 of "
        f"5) do not match their SHA-256. Delete it (rm {path} {path}.json) and "
        "the next run, or python -m keras_cskd.data.teacher_cache, rebuilds it."
    )


@pytest.mark.parametrize("keep_header", [False, True], ids=["all", "logits"])
def test_the_command_line_refuses_a_corrupt_cache_in_one_line(
    teacher_path, capsys, keep_header
):
    command = [f"--teacher={teacher_path}", "--dataset=digits"]
    assert teacher_cache.main(command) == 0
    path = teacher_cache.default_path(teacher_path, "digits")
    corrupt(path, keep_header)
    capsys.readouterr()
    assert teacher_cache.main(command) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    why = "do not match their SHA-256" if keep_header else "its header is unreadable"
    assert stderr.startswith(f"error: ValueError: The teacher-logit cache {path} is")
    assert why in stderr and f"Delete it (rm {path} {path}.json)" in stderr
    os.remove(path)  # the fix the message gives
    assert teacher_cache.main(command) == 0


@pytest.mark.large
def test_train_refuses_a_corrupt_cache_in_one_line(teacher_path, tmp_path, capsys):
    assert teacher_cache.main([f"--teacher={teacher_path}", "--dataset=digits"]) == 0
    corrupt(teacher_cache.default_path(teacher_path, "digits"), keep_header=False)
    capsys.readouterr()
    config = cached_config("digits_cskd", teacher_path)
    assert training.main(config, tmp_path / "run") == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "is corrupt: its header is unreadable" in stderr
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.large  # a subprocess: its own TensorFlow start-up
def test_the_command_line_checks_its_arguments_before_writing(tmp_path):
    output = tmp_path / "b0.npy"
    completed = subprocess.run(
        [sys.executable, "-m", "keras_cskd.data.teacher_cache"]
        + [f"--teacher={ROOT / 'saved_models' / 'digits_teacher.keras'}"]
        + ["--batch_size=0", f"--output={output}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 1
    # TensorFlow's own start-up lines may come first; ours is the last, alone.
    lines = completed.stderr.splitlines()
    assert lines[-1] == (
        "error: ArgumentError: argument --batch_size: must be a positive integer, "
        "got '0' (see --help)"
    )
    assert "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sizes", [{"batch_size": 0}, {"chunk_size": -1}])
def test_a_build_checks_its_sizes_before_writing(digits, teacher, teacher_path, sizes):
    with pytest.raises(ValueError, match=f"{next(iter(sizes))} must be a positive"):
        build(teacher_path, teacher, digits, **sizes)
    assert sorted(p.name for p in teacher_path.parent.iterdir()) == ["teacher.keras"]


def test_the_command_line_reports_a_missing_teacher_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.keras"
    assert teacher_cache.main([f"--teacher={missing}"]) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert str(missing) in stderr
    assert list(tmp_path.iterdir()) == []
