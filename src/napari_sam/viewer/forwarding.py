"""The façade's attributes and methods that belong to one of its parts (``SegmentAnything``).

``multimask = Forward("preview", "multimask", doc)`` reads and writes ``self.preview.multimask``;
``cycle_mask = Method("preview", "cycle")`` is ``self.preview.cycle`` (same signature and docstring).
"""

from __future__ import annotations

from typing import Any


class Forward:
    """A façade attribute held by one of its parts: ``multimask = Forward("preview", "multimask", doc)``
    reads and writes ``self.preview.multimask``."""

    def __init__(self, part: str, name: str, doc: str) -> None:
        self.part, self.name, self.__doc__ = part, name, doc

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class Method:
    """A façade method that is one of its parts' (same signature and docstring):
    ``cycle_mask = Method("preview", "cycle")`` gives ``self.preview.cycle``."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name
        self.__doc__ = f"``{part}.{name}``: the {part} part's method."

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(getattr(obj, self.part), self.name)
