"""Loading `.keras` model files safely, with clear errors for bad files."""

import re
import zipfile
from pathlib import Path

import keras

from keras_cskd import cli

# Keras's words for a class or function its registry does not hold.
_UNKNOWN_OBJECT = re.compile(r"Could not locate (class|function) '([^']+)'")


class CodeInModelError(ValueError):
    """A `.keras` file holds Python code (a `Lambda` layer) and `safe_mode` is on."""


def load(path, safe_mode=True):
    """Loads a model saved as a `.keras` file (a teacher, a student), uncompiled.

    Args:
        path: path to a `.keras` file.
        safe_mode: refuse files that hold Python code (a `Lambda` layer's
            bytecode), whose deserialization could execute arbitrary code. Pass
            `False` only for files you trust.

    Returns:
        The `keras.Model`, not compiled.

    Raises:
        ValueError: one line saying why, if the file is missing, is not a
            `.keras` zip, is corrupt, holds code while `safe_mode` is on, or
            holds a custom class that is not registered with Keras.

    Example:

    ```python
    teacher = keras_cskd.models.load("saved_models/digits_teacher.keras")
    ```
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"No such file: {path}.")
    if path.is_dir() or path.suffix != ".keras":
        raise ValueError(
            f"{path} is not a .keras file: save the model with "
            "`model.save('student.keras')`."
        )
    # Keras reports a corrupt or truncated zip as "File not found"; check first.
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            broken_member = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path} is corrupt: not a readable zip archive ({error})."
        ) from None
    if "config.json" not in names or broken_member is not None:
        raise ValueError(
            f"{path} is corrupt: "
            + (
                "no config.json inside."
                if broken_member is None
                else f"'{broken_member}' fails its CRC check."
            )
        )
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as error:  # Keras raises many types for a bad archive.
        raise _load_error(path, error, safe_mode) from None


def _load_error(path, error, safe_mode):
    """The one-line `ValueError` for Keras's `error` loading `path`."""
    if isinstance(error, ValueError) and safe_mode and "safe_mode" in str(error):
        return CodeInModelError(
            f"Refusing to load {path}: it holds a Lambda layer (Python bytecode) "
            "and deserializing it could execute arbitrary code. If you trust "
            "this file, pass safe_mode=False (python -m keras_cskd.export: "
            "--unsafe_deserialization)."
        )
    # Keras's message for these holds the whole config (over 1,000 characters).
    unknown = _UNKNOWN_OBJECT.search(str(error))
    if unknown:
        kind, name = unknown.groups()
        return ValueError(
            f"Could not load {path}: it holds the custom {kind} '{name}', "
            "which is not registered with Keras; decorate it with "
            "@keras.saving.register_keras_serializable() and import its "
            "module before loading."
        )
    if isinstance(error, ValueError):
        return ValueError(f"Could not load {path}: {' '.join(str(error).split())}")
    return ValueError(f"Could not load {path}: {cli.one_line(error)}")
