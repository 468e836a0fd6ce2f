"""manifest-check: validate a JSON package manifest from an input artifact.

Reads /in/<first input>/<config "file", default manifest.json>, checks that
`name` is a non-empty string, `version` an x.y.z version, and `dependencies`
(optional) an object of name -> version strings. Every problem is reported.
Exports `name`, `version` and `dependencies` (the number of dependencies).
"""

import json
import re

from sluice_sdk import Context, Failure, Outcome, action

# x.y.z with optional -prerelease and +build, as in semver.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


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


def run(ctx: Context) -> Outcome:
    if not ctx.inputs:
        raise Failure.config("manifest-check needs an input artifact holding the manifest")
    file = ctx.config("file", default="manifest.json") or "manifest.json"
    if file.startswith("/") or ".." in file.split("/"):
        raise Failure.config(f"file {file!r} must be a relative path inside the artifact")
    path = f"{ctx.input_dir()}/{file}"
    ctx.info(f"checking {path}")
    text = ctx.read_text(path)  # a missing file is a configuration-error naming it
    ctx.progress(50, "parsing")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise Failure.job(f"{file} is not valid JSON: {e}") from None

    problems = check(doc)
    for p in problems:
        ctx.warn(p)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise Failure.job(f"{file}: {len(problems)} {noun}: " + "; ".join(problems))

    deps = doc.get("dependencies") or {}
    ctx.info(f"{doc['name']}@{doc['version']}: {len(deps)} dependencies")
    ctx.progress(100, "done")
    return Outcome(
        f"{file}: {doc['name']} {doc['version']} is valid ({len(deps)} dependencies)",
        name=doc["name"],
        version=doc["version"],
        dependencies=len(deps),
    )


# componentize-py exports the class named WitWorld in module app.
WitWorld = action(run)
