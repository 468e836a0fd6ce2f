"""manifest-check: validate a JSON package manifest from an input artifact.

Reads /in/<first input>/<config "file", default manifest.json>, checks that
`name` is a non-empty string, `version` an x.y.z version, and `dependencies`
(optional) an object of name -> version strings. Every problem is reported.
Exports `name`, `version` and `dependencies` (the number of dependencies).
"""

import json
import re

import wit_world
from wit_world.imports import log, types
from componentize_py_types import Err

# x.y.z with optional -prerelease and +build, as in semver.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def config(inv: types.Invocation, key: str, default: str | None = None) -> str | None:
    for k, v in inv.config:
        if k == key:
            return v
    return default


def fail(kind: types.FailureKind, message: str) -> Err:
    log.write(log.Level.ERROR, message)
    return Err(types.Failure(kind=kind, message=message))


def check(doc: object) -> list[str]:
    """Every problem with the manifest, in a stable order."""
    if not isinstance(doc, dict):
        return [f"the manifest must be a JSON object, not {type(doc).__name__}"]
    problems = []
    name = doc.get("name")
    if name is None:
        problems.append("`name` is missing")
    elif not isinstance(name, str) or not name.strip():
        problems.append("`name` must be a non-empty string")
    version = doc.get("version")
    if version is None:
        problems.append("`version` is missing")
    elif not isinstance(version, str):
        problems.append("`version` must be a string like 1.2.3")
    elif not SEMVER.match(version):
        problems.append(f"`version` {version!r} is not an x.y.z version")
    deps = doc.get("dependencies")
    if deps is not None:
        if not isinstance(deps, dict):
            problems.append("`dependencies` must be an object of name -> version")
        else:
            for dep, want in deps.items():
                if not isinstance(want, str):
                    problems.append(f"dependency `{dep}`: version must be a string")
                elif not want.strip():
                    problems.append(f"dependency `{dep}`: version is empty")
    return problems


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: types.Invocation) -> types.Outcome:
        if not invocation.inputs:
            raise fail(
                types.FailureKind.CONFIGURATION_ERROR,
                "manifest-check needs an input artifact holding the manifest",
            )
        file = config(invocation, "file", "manifest.json") or "manifest.json"
        if file.startswith("/") or ".." in file.split("/"):
            raise fail(
                types.FailureKind.CONFIGURATION_ERROR,
                f"file {file!r} must be a relative path inside the artifact",
            )
        path = f"/in/{invocation.inputs[0]}/{file}"
        log.write(log.Level.INFO, f"checking {path}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise fail(types.FailureKind.CONFIGURATION_ERROR, f"{path} does not exist")
        except OSError as e:
            raise fail(types.FailureKind.CONFIGURATION_ERROR, f"cannot read {path}: {e}")
        log.progress(50, "parsing")
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise fail(types.FailureKind.JOB_FAILED, f"{file} is not valid JSON: {e}")

        problems = check(doc)
        for p in problems:
            log.write(log.Level.WARN, p)
        if problems:
            noun = "problem" if len(problems) == 1 else "problems"
            raise fail(
                types.FailureKind.JOB_FAILED,
                f"{file}: {len(problems)} {noun}: " + "; ".join(problems),
            )

        deps = doc.get("dependencies") or {}
        log.write(log.Level.INFO, f"{doc['name']}@{doc['version']}: {len(deps)} dependencies")
        log.progress(100, "done")
        return types.Outcome(
            summary=f"{file}: {doc['name']} {doc['version']} is valid ({len(deps)} dependencies)",
            variables=[
                ("name", doc["name"]),
                ("version", doc["version"]),
                ("dependencies", str(len(deps))),
            ],
        )
