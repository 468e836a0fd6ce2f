"""A minimal Sluice action in Python. Rename, then edit run()."""

import wit_world
from wit_world.imports import log, types
from componentize_py_types import Err


def config(invocation: types.Invocation, key: str, default: str | None = None) -> str | None:
    for k, v in invocation.config:
        if k == key:
            return v
    return default


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: types.Invocation) -> types.Outcome:
        who = config(invocation, "who", "world")
        if not who:
            # Failures cross the contract as Err(Failure(kind, message)).
            raise Err(types.Failure(kind=types.FailureKind.CONFIGURATION_ERROR, message="`who` is empty"))
        log.write(log.Level.INFO, f"greeting {who}")
        return types.Outcome(summary=f"hello, {who}", variables=[("who", who)])
