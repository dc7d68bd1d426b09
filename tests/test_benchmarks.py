"""Every benchmark script runs with `--smoke` and prints well-formed tables.

The scripts run at once, in subprocesses (most of their time is importing
TensorFlow and tracing); each test then reads one script's output. A script
in benchmarks/ without a command here fails `test_every_script_is_run`.
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
        "step_time": ["step_time.py", "--smoke", f"--json={tmp / 'step.json'}"],
        "memory_probe": ["step_time.py", "--smoke", "--memory_probe=cskd_cswt"],
        "distributed_overhead": ["distributed_overhead.py", "--smoke"],
        "batch_norm_groups": ["batch_norm_groups.py", "--smoke"],
        "throughput": ["throughput.py", "--smoke"],
        "accuracy": ["accuracy.py", "--smoke", f"--output={tmp / 'accuracy'}"],
        "teacher_cache": ["teacher_cache.py", "--smoke"],
        "imagenet_input": ["imagenet_input.py", "--smoke"],
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
    results["scripts"] = {script for script, *_ in commands.values()}
    return results


def test_every_script_is_run(runs):
    scripts = {path.name for path in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - {"timing.py"} == runs["scripts"]


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
    assert all(re.fullmatch(r":?-+:?", cell) for cell in table[1])
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
    assert len(tables) == 2  # --smoke: the digits pair, and its feature methods
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
        assert (peak, growth) == ("n/a", "n/a")  # --smoke skips memory
    assert body[-1][5] == "1.00"  # (d) ÷ (d)


def test_step_time_times_every_feature_method_against_kd(runs):
    table = tables_in(output_of(runs, "step_time"))[1]
    header = [
        "method",
        "median ms/step",
        "IQR ms",
        "÷ KD",
        "peak RSS MiB (own process)",
        "RSS growth MiB (own process)",
    ]
    assert table[0] == header
    # A method that needs a run's data (CRD's sample indices) may be skipped.
    body = [row for row in table[2:] if not row[1].startswith("skipped: ")]
    methods = [row[0] for row in body]
    assert methods[0] == "kd" and body[0][3] == "1.00"
    assert {"nst", "pkt", "rkd", "sp", "kdsvd"} <= set(methods)
    for _, median, iqr, ratio, peak, growth in body:
        positive(median)
        assert float(iqr) >= 0
        positive(ratio)
        assert (peak, growth) == ("n/a", "n/a")  # --smoke skips memory


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
    assert all(summary["count"] == 1 * 2 for summary in step_ms.values())
    feature_step_ms = result["pairs"]["digits"]["feature_step_ms"]
    assert {"kd", "nst", "pkt", "rkd", "sp", "kdsvd"} <= set(feature_step_ms)


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


def test_batch_norm_groups_compares_cross_and_per_replica_statistics(runs):
    text = output_of(runs, "batch_norm_groups")
    assert "; commit " in text
    (table,) = tables_in(text)
    header = ["BatchNorm statistics", "median ms/step", "IQR ms", "÷ per-replica"]
    body = check_table(
        table,
        header,
        [
            "1 device, global batch",
            "2 devices, per-replica (group = batch / 2)",
            "2 devices, cross-replica (global batch)",
        ],
    )
    assert [positive(ratio) for *_, ratio in body][1] == 1.0


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
    # --smoke: the first two methods, one seed, one epoch, the grid's first value.
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


def test_teacher_cache_prints_the_cost_model_and_the_disk_sizes(runs):
    stdout = output_of(runs, "teacher_cache")
    tables = tables_in(stdout)
    assert len(tables) == 3
    labels = [
        "T: teacher inference",
        "S: student step, CE",
        "online step (Distiller, CSKD)",
        "cached step (Distiller, CSKD, cached logits)",
        "B: build, per variant image",
    ]
    header = ["cost", "ms per image", "against its bound"]
    costs = check_table(tables[0], header, labels)
    ms = {row[0][:2]: positive(row[1]) for row in costs}
    teacher, student = ms["T:"], ms["S:"]
    for row, bound, expected in (
        (costs[2], " x (T + S)", ms["on"] / (teacher + student)),
        (costs[3], " x S", ms["ca"] / student),
        (costs[4], " x T", ms["B:"] / teacher),
    ):
        assert row[2].endswith(bound)
        assert float(row[2].removesuffix(bound)) == pytest.approx(expected, rel=0.05)
    header = [
        "k runs, 240 epochs, V = 9",
        "measured: (V/E x B/k + cached step) / online step",
        "projected: (V/E x T/k + S) / (T + S)",
    ]
    for k, measured, projected in check_table(tables[1], header, ["1", "3", "5"]):
        share = 9 / 240 / int(k)
        expected = (share * teacher + student) / (teacher + student)
        assert float(projected) == pytest.approx(expected, rel=0.05)  # cells rounded
        expected = (share * ms["B:"] + ms["ca"]) / ms["on"]
        assert float(measured) == pytest.approx(expected, rel=0.05)  # cells rounded
    header = ["dataset", "examples x variants x classes"]
    header += ["float32 on disk", "float16 on disk"]
    sizes = check_table(tables[2], header, ["digits", "CIFAR-10", "CIFAR-100"])
    assert sizes[2][2:] == ["3,089.9 MiB", "1,545.0 MiB"]  # 50000 x 162 x 100 x 4, 2
    # The formula against the digits caches the script built: a 128-byte header.
    assert "float32 452648 bytes = 128 (header) + formula" in stdout


def test_imagenet_input_prints_rates_and_the_projection(runs):
    stdout = output_of(runs, "imagenet_input")
    tables = tables_in(stdout)
    assert len(tables) == 1
    header = ["pipeline", "median images/s", "IQR", "÷ baseline", "images/CPU-s"]
    labels = [
        "plain tf.data, the usual way (decode, crop, resize, flip)",
        "keras_cskd streaming.train_pipeline",
        "keras_cskd streaming.eval_pipeline",
        "decoding alone (accurate DCT)",
    ]
    body = check_table(tables[0], header, labels)
    for _, rate, iqr, ratio, per_cpu_second in body:
        assert positive(ratio) == pytest.approx(
            positive(rate) / positive(body[0][1]), rel=0.02, abs=0.01
        )
        assert float(iqr) >= 0 and positive(per_cpu_second)
    assert body[0][3] == "1.00"
    assert re.search(r"takes \d+\.\d cores of this CPU", stdout)
