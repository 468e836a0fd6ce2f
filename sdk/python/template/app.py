"""A minimal Sluice action in Python. Rename, then edit run().

sluice_sdk (the SDK's helper module, put on the path by build.sh) wraps the
contract: `ctx` holds the configuration, artifacts, logging and progress.
"""

from sluice_sdk import Context, Failure, Outcome, action


def run(ctx: Context) -> Outcome:
    who = ctx.config("who", default="world")
    if not who.strip():
        # A Failure becomes err(failure) with its kind; other exceptions trap.
        raise Failure.config("`who` is empty")
    ctx.info(f"greeting {who}")
    if ctx.outputs:
        ctx.write_text(f"{ctx.output_dir()}/greeting.txt", f"hello, {who}\n")
    return Outcome(f"hello, {who}", who=who)


# componentize-py exports the class named WitWorld in module app.
WitWorld = action(run)
