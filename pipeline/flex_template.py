"""The Flex Template's entry point: the launcher's ``--name=value`` parameters → ``stampflow run``.

The Dataflow launcher passes each template parameter as ``--name=value`` (names with ``_``, as in
``deploy/flex_template/metadata.json``) next to Beam's own options (``--runner``, ``--project``,
``--temp_location``...). :func:`template_argv` turns them into ``stampflow run``'s flags: ``_``
becomes ``-``, a switch's ``true``/``false`` becomes the flag or nothing, and ``{last_night}`` in a
value becomes the UT date (``YYYYMMDD``) of the last night that has ended, so a Cloud Scheduler job
with a fixed body processes last night's archive. Beam's options pass through untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from pipeline.options import add_arguments

__all__ = ["LAST_NIGHT", "NOT_TEMPLATE_PARAMETERS", "last_night", "main", "template_argv"]

#: Placeholder for the UT date of the last night that has ended (``YYYYMMDD``).
LAST_NIGHT = "{last_night}"
#: ``stampflow run`` flags that are no template parameter, and why.
NOT_TEMPLATE_PARAMETERS: dict[str, str] = {
    "runner": "the launcher sets DataflowRunner",
    "bigquery-emulator": "a local emulator, for tests",
    "max-run-seconds": "cancels a local streaming run; on Dataflow drain or cancel the job",
}
#: Hours after 00:00 UT by which a Palomar night has ended (dawn is ~12-14 UT): before this,
#: "last night" is the previous UT date.
_NIGHT_ENDS_UT_H = 14


def last_night(now: dt.datetime | None = None) -> str:
    """The UT date (``YYYYMMDD``) of the last ZTF night that has ended at ``now`` (UTC)."""
    now = now or dt.datetime.now(dt.UTC)
    return (now - dt.timedelta(hours=_NIGHT_ENDS_UT_H)).strftime("%Y%m%d")


def _switches_and_flags() -> tuple[set[str], set[str]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
    switches = {a.option_strings[0] for a in parser._actions if a.option_strings and a.nargs == 0}
    return switches, flags


def template_argv(argv: Sequence[str], now: dt.datetime | None = None) -> list[str]:
    """The launcher's arguments as ``stampflow run`` arguments (see the module docstring).

    Parameters
    ----------
    argv
        ``--name=value`` template parameters and Beam options.
    now
        The time ``{last_night}`` is computed at (default: now, UTC).

    Returns
    -------
    list of str
    """
    switches, flags = _switches_and_flags()
    night = last_night(now)
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        flag = name.replace("_", "-")
        if not (name.startswith("--") and eq and flag in flags):
            out.append(arg)  # Beam's own option, passed through as it came
        elif flag in switches:
            if value.strip().lower() == "true":
                out.append(flag)
        else:
            out.append(f"{flag}={value.replace(LAST_NIGHT, night)}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stampflow run`` with the launcher's arguments; returns the exit status."""
    from pipeline.cli import main as cli_main

    return cli_main(["run", *template_argv(sys.argv[1:] if argv is None else argv)])
