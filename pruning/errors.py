"""The project's exception types, in one leaf module (no torch, no other project imports).

Every error the engine raises on purpose is a ``PruningError`` with a ``kind``:

* ``input``     -- the request is wrong (a field, a pattern, a model id, a text source); the message names the field
                   as the user sees it and the allowed values. Subclasses also derive from ``ValueError``.
* ``numerical`` -- the maths failed on these numbers (a factorisation that damping could not save, NaN/Inf);
                   subclasses also derive from ``RuntimeError``.
* ``internal``  -- anything else (a bug): shown with its class name, so it can be reported.

``error_kind(exc)`` classifies any exception that way; the job runner puts it into ``JobFailed.kind`` so the UI
never has to parse messages or class names.
"""
from __future__ import annotations

INPUT, NUMERICAL, INTERNAL = "input", "numerical", "internal"
KINDS = (INPUT, NUMERICAL, INTERNAL)


class PruningError(Exception):
    """Base of the project's own errors."""

    kind = INTERNAL


class InputError(PruningError, ValueError):
    """Invalid input; the message names the field and the allowed values."""

    kind = INPUT


class NumericalError(PruningError, RuntimeError):
    """A numerical failure on the given data (e.g. a Gram that no damping makes positive definite)."""

    kind = NUMERICAL


def error_kind(exc: BaseException) -> str:
    """``input``, ``numerical`` or ``internal`` for any exception (plain ValueErrors count as input)."""
    if isinstance(exc, PruningError):
        return exc.kind
    if isinstance(exc, FloatingPointError):
        return NUMERICAL
    if isinstance(exc, (ValueError, KeyError)):
        return INPUT
    return INTERNAL


def user_message(exc: BaseException) -> str:
    """The message to show: the text alone for input and numerical errors, with the class name for internal ones."""
    kind = error_kind(exc)
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    return text if kind != INTERNAL else f"{type(exc).__name__}: {text}"
