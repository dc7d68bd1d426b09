"""The benchmark scripts run in `--quick` mode and print well-formed tables.

The scripts run at once, in subprocesses (most of their time is importing
TensorFlow and tracing); each test then reads one script's output.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.large  # multi-process, end-to-end or every zoo model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600

STEP_TIME_ROWS = [
    "(a) student alone, CE",
    "(b) teacher inference",
    "(c) Distiller, KD",
    "(c) Distiller, CSKD",
    "(c) Distiller, CSKD+CSWT",
    "(c) Distiller, KD, cached teacher logits",
    "(c) Distiller, CSKD, cached teacher logits",
    "(c) Distiller, CSKD+CSWT, cached teacher logits",
    "(d) keras.distillation.Distiller, KD",
]
DISTRIBUTED_ROWS = [
    "default strategy, 1 device",
    "MirroredStrategy, 1 device",
    "MirroredStrategy, 2 devices",
]
THROUGHPUT_ROWS = [
    "teacher inference (/CPU:0)",
    "student training, CE (/CPU:0)",
    "distillation, CSKD+CSWT (/CPU:0)",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{name: (return code, stdout, stderr)}` of every benchmark run."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    commands = {
        "step_time": ["step_time.py", "--quick", f"--json={tmp / 'step.json'}"],
        "memory_probe": ["step_time.py", "--quick", "--memory_probe=cskd_cswt"],
        "distributed_overhead": ["distributed_overhead.py", "--quick"],
        "throughput": ["throughput.py", "--quick"],
        "accuracy": ["accuracy.py", "--quick", f"--output={tmp / 'accuracy'}"],
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = {}
    for name, (script, *args) in commands.items():
        stdout = open(tmp / f"{name}.out", "w+")  # noqa: SIM115  closed below
        stderr = open(tmp / f"{name}.err", "w+")  # noqa: SIM115
        command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
        processes[name] = (
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr),
            stdout,
            stderr,
        )
    results = {}
    for name, (process, stdout, stderr) in processes.items():
        process.wait(timeout=TIMEOUT_S)
        outputs = []
        for file in (stdout, stderr):
            file.seek(0)
            outputs.append(file.read())
            file.close()
        results[name] = (process.returncode, *outputs)
    results["step_time_json"] = tmp / "step.json"
    results["accuracy_output"] = tmp / "accuracy"
    return results


def output_of(runs, name):
    returncode, stdout, stderr = runs[name]
    assert returncode == 0, f"{name} exited with {returncode}:\n{stderr[-3000:]}"
    return stdout


def tables_in(text):
    """The Markdown tables in `text`, each a list of rows of stripped cells."""
    tables, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|") and line.endswith("|"):
            table.append([cell.strip() for cell in line[1:-1].split("|")])
        elif table:
            tables.append(table)
            table = []
    return tables


def check_table(table, header, labels):
    """Checks the header, the rule and the row labels; returns the body rows."""
    assert table[0] == header
    assert len(table[1]) == len(header)
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in table[1])
    body = table[2:]
    assert [row[0] for row in body] == labels
    assert all(len(row) == len(header) for row in body)
    return body


def positive(cell):
    value = float(cell)
    assert value > 0, cell
    return value


def test_step_time_prints_every_configuration_with_ratios(runs):
    tables = tables_in(output_of(runs, "step_time"))
    assert len(tables) == 1  # --quick: the digits pair only
    header = [
        "configuration",
        "median ms/step",
        "IQR ms",
        "÷ (a)",
        "÷ (a + b)",
        "÷ (d)",
        "peak RSS MiB (own process)",
        "RSS growth MiB (own process)",
    ]
    body = check_table(tables[0], header, STEP_TIME_ROWS)
    for label, median, iqr, *ratios, peak, growth in body:
        positive(median)
        assert float(iqr) >= 0
        if label.startswith(("(c)", "(d)")):
            assert all(positive(ratio) for ratio in ratios)
        else:
            assert ratios == ["-", "-", "-"]
        assert (peak, growth) == ("n/a", "n/a")  # --quick skips memory
    assert body[-1][5] == "1.00"  # (d) ÷ (d)


def test_step_time_writes_json(runs):
    output_of(runs, "step_time")
    result = json.loads(runs["step_time_json"].read_text())
    step_ms = result["pairs"]["digits"]["step_ms"]
    assert set(step_ms) == {
        "student",
        "teacher",
        "kd",
        "cskd",
        "cskd_cswt",
        "kd_cached",
        "cskd_cached",
        "cskd_cswt_cached",
        "keras_kd",
    }
    assert all(summary["count"] == 3 * 2 for summary in step_ms.values())


def test_memory_probe_reports_peak_and_growth(runs):
    memory = json.loads(output_of(runs, "memory_probe").strip().splitlines()[-1])
    assert memory["peak"] >= memory["built"] > 0
    assert memory["growth"] == pytest.approx(memory["peak"] - memory["built"])


def test_distributed_overhead_compares_one_and_two_devices(runs):
    tables = tables_in(output_of(runs, "distributed_overhead"))
    assert len(tables) == 1
    header = ["strategy", "median ms/step", "IQR ms", "÷ default"]
    body = check_table(tables[0], header, DISTRIBUTED_ROWS)
    for _, median, iqr, ratio in body:
        positive(median)
        assert float(iqr) >= 0
        positive(ratio)
    assert body[0][3] == "1.00"


def test_throughput_reports_images_per_second(runs):
    stdout = output_of(runs, "throughput")
    tables = tables_in(stdout)
    assert len(tables) == 1
    header = ["configuration", "device", "median ms/step", "images/s"]
    labels = THROUGHPUT_ROWS
    if "(/GPU:0)" in stdout:
        labels = labels + [label.replace("/CPU:0", "/GPU:0") for label in labels]
    body = check_table(tables[0], header, labels)
    for _, device, median, images_per_second in body:
        assert device
        assert positive(images_per_second) == pytest.approx(
            1000 * 8 / positive(median), rel=0.05, abs=1
        )


def test_accuracy_writes_the_table_the_json_and_the_chart(runs):
    stdout = output_of(runs, "accuracy")
    output = runs["accuracy_output"]
    tables = tables_in((output / "accuracy.md").read_text())
    assert tables == tables_in(stdout)
    header = [
        "method",
        "tuned on validation",
        "test accuracy, val-selected epoch (%)",
        "test accuracy, last epoch (%)",
    ]
    # --quick: the first two methods, one seed, one epoch, the grid's first value.
    body = check_table(tables[0], header, ["scratch (CE only)", "KD"])
    assert [row[1] for row in body] == ["-", "T 2"]
    for _, _, *accuracies in body:
        for cell in accuracies:
            mean, std = re.fullmatch(r"(\d+\.\d\d) \+- (\d+\.\d\d)", cell).groups()
            assert 0 <= float(mean) <= 100 and float(std) == 0
    results = json.loads((output / "accuracy.json").read_text())
    assert results["KD"]["tuned"] == {"loss.temperature": 2.0}
    assert results["KD"]["teacher"] == 1.0  # the shipped digits teacher
    assert all(len(r["selected"]) == len(r["last"]) == 1 for r in results.values())
    assert (output / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_cache_benchmark_quick():
    """`benchmarks/teacher_cache.py --quick` prints its table (kept apart from
    `runs`: it builds caches, which the other scripts do not)."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "teacher_cache.py"), "--quick"],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["digits", "cifar"]


def test_imagenet_input_benchmark_quick():
    """`benchmarks/imagenet_input.py --quick` prints its table, every rate
    positive and the ratios against the baseline, and the projection."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "imagenet_input.py"), "--quick"],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    tables = tables_in(completed.stdout)
    assert len(tables) == 1
    header = ["pipeline", "median images/s", "IQR", "÷ baseline", "images/CPU-s"]
    labels = [
        "plain tf.data, the usual way (decode, crop, resize, flip)",
        "keras_cskd imagenet.train_pipeline",
        "keras_cskd imagenet.eval_pipeline",
        "decoding alone (accurate DCT)",
    ]
    body = check_table(tables[0], header, labels)
    for _, rate, iqr, ratio, per_cpu_second in body:
        assert positive(ratio) == pytest.approx(
            positive(rate) / positive(body[0][1]), rel=0.02, abs=0.01
        )
        assert float(iqr) >= 0 and positive(per_cpu_second)
    assert body[0][3] == "1.00"
    assert re.search(r"takes \d+\.\d cores of this CPU", completed.stdout)
