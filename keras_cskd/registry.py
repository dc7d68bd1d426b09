"""`Registry`: names to builders of one kind, filled by a decorator.

Models, losses, datasets and augmentations each keep one, so adding any of
them is one file plus one decorator (docs/extending.md).
"""

import difflib


class Registry:
    """Maps names to the objects registered under them.

    Args:
        kind: what the registry holds, for messages (`"model"`, `"loss"`).
        hint: what else `get` accepts, appended to the unknown-name error.

    Example:

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side):
    ...     return side * side
    >>> shapes.get("square")(3)
    9
    >>> shapes.names()
    ['square']
    """

    def __init__(self, kind, hint=""):
        self.kind = kind
        self.hint = hint
        self._entries = {}

    def register(self, name):
        """A decorator that registers what it decorates under `name`.

        Raises:
            ValueError: if `name` is already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} name must be a non-empty string.")

        def decorator(entry):
            if name in self._entries:
                raise ValueError(
                    f"A {self.kind} named '{name}' is already registered "
                    f"({self._entries[name].__module__}): choose another name."
                )
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name):
        """What is registered under `name`.

        Raises:
            ValueError: for an unknown name, listing the known ones and the
                closest matches.
        """
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        suggestion = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown {self.kind} '{name}'.{suggestion} Known {self.kind}s: "
            f"{', '.join(self.names())}{self.hint}."
        )

    def names(self):
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries
