"""milterd: a mail content filter for Postfix, as a pre-forked milter."""

__version__ = "0.1.0"

#: SIGHUPs that came while ``milterd serve`` was starting, before its supervisor took the signal over: a reload
#: once it runs (SIGHUP's default ends the process, and a reload sent just after a start stopped milterd silently).
#: Kept here, the one module the command line imports before anything heavy (cli.py installs the handler).
EARLY_HUPS: list[int] = []


def record_early_hup(signum: int, _frame: object) -> None:
    """The SIGHUP handler of a starting ``milterd serve`` (see :data:`EARLY_HUPS`)."""
    EARLY_HUPS.append(signum)
