"""sluice_sdk: write a Sluice action in Python as one function of a Context.

The Python counterpart of the Rust SDK's `Context` (sdk/rust). sdk/python/build.sh
puts this module on the component's path, so an app.py can write::

    from sluice_sdk import Context, Failure, Outcome, action

    def run(ctx: Context) -> Outcome:
        who = ctx.config("who", default="world")
        ctx.info(f"greeting {who}")
        return Outcome(f"hello, {who}", who=who)

    WitWorld = action(run)

`run` returns an `Outcome` (or a plain summary string) or raises `Failure`;
`action` turns it into the `WitWorld` class componentize-py exports. Any other
exception traps the action; its traceback goes to the action's stderr.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import wit_world
from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import secrets as _secrets
from wit_world.imports import types

__all__ = ["Context", "Failure", "Outcome", "action"]

_KINDS = {
    "job-failed": types.FailureKind.JOB_FAILED,
    "configuration-error": types.FailureKind.CONFIGURATION_ERROR,
    "permission-error": types.FailureKind.PERMISSION_ERROR,
    "revision-unavailable": types.FailureKind.REVISION_UNAVAILABLE,
}

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class Failure(Exception):
    """A failed action: raise it from `run`. `kind` is one of job-failed (the
    default; retried when the pipeline asks for retries), configuration-error,
    permission-error, revision-unavailable."""

    def __init__(self, message: str, kind: str = "job-failed"):
        if kind not in _KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; use one of {', '.join(_KINDS)}")
        super().__init__(message)
        self.message = message
        self.kind = kind

    @classmethod
    def job(cls, message: str) -> "Failure":
        """The job itself failed: a build broke, a test failed."""
        return cls(message, "job-failed")

    @classmethod
    def config(cls, message: str) -> "Failure":
        """The configuration is missing or wrong; retrying will not help."""
        return cls(message, "configuration-error")

    @classmethod
    def permission(cls, message: str) -> "Failure":
        """A capability the action needs was not granted."""
        return cls(message, "permission-error")


class Outcome:
    """A successful result: a one-line summary and output variables, which
    later actions read as `#{namespace.key}`."""

    def __init__(self, summary: str, **variables: object):
        self.summary = summary
        self.variables: list[tuple[str, str]] = [(k, str(v)) for k, v in variables.items()]

    def variable(self, key: str, value: object) -> "Outcome":
        """Add (or replace) an output variable; returns the outcome for chaining."""
        self.variables = [(k, v) for k, v in self.variables if k != key]
        self.variables.append((key, str(value)))
        return self


class Context:
    """What the action was told, and its window onto the host."""

    def __init__(self, invocation: types.Invocation):
        self.invocation = invocation
        self.pipeline: str = invocation.pipeline
        self.stage: str = invocation.stage
        self.action: str = invocation.action
        self.execution_id: str = invocation.execution_id
        self.attempt: int = invocation.attempt
        self.inputs: list[str] = list(invocation.inputs)
        self.outputs: list[str] = list(invocation.outputs)
        self.mounts: list[str] = list(invocation.mounts)
        self.continuation: Optional[str] = getattr(invocation, "continuation", None)
        # `/workspace`: writable scratch space, deleted after the action.
        self.workspace: str = "/workspace"

    # --- configuration ------------------------------------------------------

    def config(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of `key`, or `default` when the pipeline did not set it."""
        for k, v in self.invocation.config:
            if k == key:
                return v
        return default

    def require(self, key: str) -> str:
        """The value of `key`; a configuration-error naming it when unset or empty."""
        value = self.config(key)
        if value is None or not value.strip():
            raise Failure.config(f"config `{key}` is required")
        return value

    def config_int(self, key: str, default: int) -> int:
        """`key` as an integer, or `default` when unset."""
        value = self.config(key)
        if value is None:
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise Failure.config(f"config `{key}` must be an integer, not {value!r}") from None

    def config_bool(self, key: str, default: bool) -> bool:
        """`key` as a boolean (true/false, yes/no, 1/0, on/off), or `default`."""
        value = self.config(key)
        if value is None:
            return default
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise Failure.config(f"config `{key}` must be true or false, not {value!r}")

    # --- artifacts ----------------------------------------------------------

    def input_dir(self, name: Optional[str] = None) -> str:
        """`/in/<name>`, read-only; without a name, the first input artifact."""
        return f"/in/{self._artifact(self.inputs, name, 'input')}"

    def output_dir(self, name: Optional[str] = None) -> str:
        """`/out/<name>`, initially empty; without a name, the first output artifact."""
        return f"/out/{self._artifact(self.outputs, name, 'output')}"

    def mount_dir(self, name: str) -> str:
        """`/mnt/<name>`: a granted host directory."""
        return f"/mnt/{self._artifact(self.mounts, name, 'mount')}"

    def read_text(self, path: str) -> str:
        """The UTF-8 text of `path`. A missing file is a configuration-error
        naming it; another read error fails the job."""
        return self._read(path, "r")

    def read_bytes(self, path: str) -> bytes:
        """The bytes of `path`, with the errors of `read_text`."""
        return self._read(path, "rb")

    def write_text(self, path: str, text: str) -> None:
        """Write `text` to `path` (UTF-8), creating its parent directories."""
        parent = os.path.dirname(path)
        try:
            # Only below what exists: /out and /in themselves are not visible
            # (each artifact is its own preopen), so makedirs cannot climb there.
            if parent and not os.path.isdir(parent):
                os.makedirs(parent, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise Failure.job(f"cannot write {path}: {e.strerror or e}") from None

    # --- secrets, logging, progress -------------------------------------------

    def secret(self, name: str) -> str:
        """The granted secret `name`; a permission-error otherwise. Asking for a
        secret that was not granted fails the action even if this is caught."""
        try:
            return _secrets.get(name)
        except Err as e:
            raise Failure.permission(str(e.value)) from None

    def trace(self, message: str) -> None:
        _log.write(_log.Level.TRACE, message)

    def debug(self, message: str) -> None:
        _log.write(_log.Level.DEBUG, message)

    def info(self, message: str) -> None:
        _log.write(_log.Level.INFO, message)

    def warn(self, message: str) -> None:
        _log.write(_log.Level.WARN, message)

    def error(self, message: str) -> None:
        _log.write(_log.Level.ERROR, message)

    def progress(self, percent: int, message: str) -> None:
        """Report progress (clamped to 0-100) with a short message, shown live."""
        _log.progress(max(0, min(100, int(percent))), message)

    # --- internals ----------------------------------------------------------

    def _artifact(self, names: list[str], name: Optional[str], what: str) -> str:
        if name is None:
            if not names:
                raise Failure.config(f"this action needs an {what} artifact; add `{what}s = [...]` in the pipeline")
            return names[0]
        if name not in names:
            known = ", ".join(names) or "none"
            raise Failure.config(f"`{name}` is not one of this action's {what}s ({known})")
        return name

    def _read(self, path: str, mode: str):
        try:
            if mode == "rb":
                with open(path, "rb") as f:
                    return f.read()
            with open(path, "r", encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise Failure.config(f"{path} does not exist") from None
        except UnicodeDecodeError:
            raise Failure.job(f"{path} is not UTF-8 text") from None
        except OSError as e:
            raise Failure.job(f"cannot read {path}: {e.strerror or e}") from None


Run = Callable[[Context], Union[Outcome, str]]


def action(run: Run) -> type:
    """The `WitWorld` class for app.py: calls `run(Context)` once per attempt.

    A returned `Outcome` (or summary string) becomes `ok`; a raised `Failure`
    is logged at error level and becomes `err` with its kind.
    """

    class WitWorld(wit_world.WitWorld):
        def run(self, invocation: types.Invocation) -> types.Outcome:
            ctx = Context(invocation)
            try:
                result = run(ctx)
            except Failure as f:
                ctx.error(f.message)
                raise Err(types.Failure(kind=_KINDS[f.kind], message=f.message)) from None
            if isinstance(result, str):
                result = Outcome(result)
            if not isinstance(result, Outcome):
                raise TypeError(f"run must return an Outcome or a str, not {type(result).__name__}")
            return types.Outcome(summary=result.summary, variables=result.variables)

    WitWorld.__name__ = WitWorld.__qualname__ = "WitWorld"
    return WitWorld
