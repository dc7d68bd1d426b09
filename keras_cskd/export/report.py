"""The plain-text table of an `evaluate_exports` report, one row per artefact."""

HEADER = (
    "format",
    "size (bytes)",
    "accuracy",
    "agreement",
    "max |dlogit|",
    "latency (ms)",
    "builtin ops",
)


def format_table(report):
    """Formats an `evaluate_exports` report as a plain-text table.

    Args:
        report: the dict `evaluate_exports` returns (or its JSON, loaded).

    Returns:
        A multi-line string: a line on the Keras student, then a header and one
        row per artefact (format; size in bytes; accuracy; agreement with the
        student; largest logit difference; latency in ms; built-in ops only),
        the format left-aligned, the numbers right-aligned, and a last line on
        the int8 calibration sample when there is one.

    Example:

    ```python
    print(format_table(report).splitlines()[0])  # The digits CNN.
    # Keras student: 94,634 parameters, accuracy 100.00% on 270 examples
    ```
    """
    student = report["keras"]
    rows = [_row(name, entry) for name, entry in report["artefacts"].items()]
    widths = [max(len(row[i]) for row in (HEADER, *rows)) for i in range(len(HEADER))]
    rule = tuple("-" * width for width in widths)
    return "\n".join(
        [
            f"Keras student: {student['parameters']:,} parameters, accuracy "
            f"{100 * student['accuracy']:.2f}% on {report['num_examples']} examples",
            *(_line(row, widths) for row in (HEADER, rule, *rows)),
            *_calibration_lines(report.get("calibration")),
        ]
    )


def _calibration_lines(calibration):
    """`[the int8 calibration sample's size and spread over the classes]`."""
    if not calibration:
        return []
    line = f"int8 calibrated on {calibration['examples']:,} training images"
    per_class = calibration.get("examples_per_class")
    if per_class:
        low, high = min(per_class.values()), max(per_class.values())
        spread = f"{low}" if low == high else f"{low} to {high}"
        line += f": {spread} per class, {len(per_class)} classes"
    return [line]


def _row(name, entry):
    """The cells of one artefact's row."""
    builtin = entry.get("builtin_ops_only")
    return (
        name,
        f"{entry['size_bytes']:,}",
        f"{100 * entry['accuracy']:.2f}%",
        f"{100 * entry['agreement']:.2f}%",
        f"{entry['max_abs_logit_diff']:.2e}",
        f"{entry['latency_ms']:.3f}",
        "n/a" if builtin is None else ("yes" if builtin else "NO"),
    )


def _line(row, widths):
    """`row` as one line: the first cell left-aligned, the others right-aligned."""
    cells = [row[0].ljust(widths[0])]
    cells += [
        cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
    ]
    return "  ".join(cells)
