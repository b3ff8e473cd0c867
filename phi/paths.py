"""Field paths of the tokenizer CLI: which values of a JSON document to rewrite.

A path is dot-separated names, where ``name[]`` steps into every element of a
list: ``actor.email``, ``targets[].id``, ``metadata.mrn``. A missing field or a
``null`` is skipped; a value that is not a string is an error naming the path.
``PATH=DOMAIN`` pairs (``--field``) say in which token domain each path is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from velora.errors import ErrorDetail, ValidationError

_SEGMENT = re.compile(r"([A-Za-z0-9_:.-]+?)(\[\])?")


@dataclass(frozen=True)
class FieldPath:
    """One ``--field PATH=DOMAIN``."""

    text: str
    steps: tuple[tuple[str, bool], ...]
    domain: str

    @classmethod
    def parse(cls, spec: str) -> FieldPath:
        """Parse ``PATH=DOMAIN``; :class:`ValidationError` naming ``--field`` when malformed."""
        path, sep, domain = spec.partition("=")
        steps = []
        for part in path.split(".") if path else ():
            m = _SEGMENT.fullmatch(part)
            if m is None:
                steps = []
                break
            steps.append((m.group(1), m.group(2) is not None))
        if not sep or not domain or not steps:
            raise ValidationError(
                "--field must be PATH=DOMAIN, e.g. targets[].id=patient_id",
                (ErrorDetail("--field", "must be PATH=DOMAIN"),),
            )
        return cls(path, tuple(steps), domain)

    def apply(self, doc: Any, fn: Callable[[str, str, str], str]) -> None:
        """Replace, in place, each string at this path by ``fn(value, domain, where)``."""
        self._walk(doc, 0, "", fn)

    def _walk(self, node: Any, i: int, where: str, fn: Callable[[str, str, str], str]) -> None:
        name, each = self.steps[i]
        if not isinstance(node, dict) or node.get(name) is None:
            return
        here = f"{where}.{name}" if where else name
        last = i == len(self.steps) - 1
        if each:
            items = node[name]
            if not isinstance(items, list):
                raise _not(f"{here}[]", "must be a list")
            for n, item in enumerate(items):
                at = f"{here}[{n}]"
                if last:
                    items[n] = _value(item, at, self.domain, fn)
                else:
                    self._walk(item, i + 1, at, fn)
        elif last:
            node[name] = _value(node[name], here, self.domain, fn)
        else:
            self._walk(node[name], i + 1, here, fn)


def _not(where: str, reason: str) -> ValidationError:
    return ValidationError(f"{where}: {reason}", (ErrorDetail(where, reason),))


def _value(value: Any, where: str, domain: str, fn: Callable[[str, str, str], str]) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _not(where, "must be a string to (de)tokenize")
    return fn(value, domain, where)
