"""A run's summary: the headline accuracies, their aggregate over seeds, the table."""

import numpy as np

SEED_METRICS = (
    "student_test_accuracy",
    "student_test_accuracy_at_best_epoch",
    "best_test_accuracy_over_epochs",
)


def epoch_summary(history):
    """Last-epoch test accuracy (the headline), and the epoch the validation
    split selects; the best test accuracy over epochs is what the reference
    frameworks report, given for comparison only.

    Example:

    >>> epoch_summary({"test_accuracy": [0.5, 0.7, 0.6]})["best_epoch"]
    2
    """
    test = history["test_accuracy"]
    validation = history.get("val_accuracy")
    best = int(np.argmax(validation or test))
    return {
        "last_epoch": len(test),
        "student_test_accuracy": test[-1],
        "best_epoch": best + 1,
        "best_epoch_selected_by": "val_accuracy" if validation else "test_accuracy",
        "student_test_accuracy_at_best_epoch": test[best],
        "best_validation_accuracy": max(validation) if validation else None,
        "best_test_accuracy_over_epochs": max(test),
    }


def aggregate(seeds, summaries):
    """The mean, standard deviation and values of `SEED_METRICS` over seeds.

    Example:

    ```python
    aggregate([0, 1], [summary_0, summary_1])["metrics"]["student_test_accuracy"]
    # {'mean': ..., 'std': ..., 'values': [...]}
    ```
    """
    return {
        "seeds": [int(seed) for seed in seeds],
        "metrics": {
            key: {
                "mean": float(np.mean([s[key] for s in summaries])),
                "std": float(np.std([s[key] for s in summaries], ddof=1))
                if len(summaries) > 1
                else 0.0,
                "values": [s[key] for s in summaries],
            }
            for key in SEED_METRICS
        },
    }


def format_summary(summary):
    """A short, aligned table of a run's summary for the terminal."""
    rows = [
        ("method", summary["method"]),
        ("model (params)", f"{summary['model']} ({summary['model_params']:,})"),
    ]
    if "teacher_test_accuracy" in summary:
        rows.append(
            ("teacher test accuracy", f"{summary['teacher_test_accuracy']:.4f}")
        )
    rows += [
        (
            f"test accuracy, last epoch ({summary['last_epoch']})",
            f"{summary['student_test_accuracy']:.4f}",
        ),
        (
            f"test accuracy, best epoch ({summary['best_epoch']}, by "
            f"{summary['best_epoch_selected_by']})",
            f"{summary['student_test_accuracy_at_best_epoch']:.4f}",
        ),
    ]
    for name, report in summary.get("exports", {}).items():
        rows.append(
            (
                f"{name}: accuracy / agreement / max |dlogit|",
                f"{report['accuracy']:.4f} / {report['agreement']:.4f} / "
                f"{report['max_abs_logit_diff']:.1e}",
            )
        )
    rows.append(("wall time", f"{summary['wall_time_s']:.1f} s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
