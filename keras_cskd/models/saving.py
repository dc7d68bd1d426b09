"""Loading `.keras` model files safely, with clear errors for bad files."""

import zipfile
from pathlib import Path

import keras

from keras_cskd import cli


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
            `.keras` zip or is corrupt; `CodeInModelError` (a `ValueError`) if
            it holds code while `safe_mode` is on.

    Example:

    >>> teacher = keras_cskd.models.load("saved_models/digits_teacher.keras")
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
    except ValueError as error:
        if safe_mode and "safe_mode" in str(error):
            raise CodeInModelError(
                f"Refusing to load {path}: it holds a Lambda layer (Python bytecode) "
                "and deserializing it could execute arbitrary code. If you trust "
                "this file, pass safe_mode=False (python -m keras_cskd.export: "
                "--unsafe_deserialization)."
            ) from None
        raise ValueError(
            f"Could not load {path}: {' '.join(str(error).split())}"
        ) from None
    except Exception as error:  # Keras raises many types for a bad archive.
        raise ValueError(f"Could not load {path}: {cli.one_line(error)}") from None
