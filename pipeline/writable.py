"""Is an output directory writable? Asked once, before any work (any Beam filesystem).

Apart from :mod:`pipeline.options` so that the model commands (``train --out``,
``import-alerce --out``, through :mod:`model.remote`) ask the same question without importing
the run options.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import OptionsError

__all__ = ["check_output"]

#: Name prefix of the probe file written and deleted in the output directory.
_PROBE = "._stampflow_write_check_"


def check_output(output: str, flag: str = "--output") -> str:
    """``--output`` must be a directory this process can write (local or any Beam filesystem).

    A probe file is written and deleted, so an unwritable output is refused before the pipeline
    runs rather than after it.

    Raises
    ------
    OptionsError
        When the output is an existing file or cannot be written.
    """
    if "://" not in output:
        path = Path(output)
        if path.exists() and not path.is_dir():
            raise OptionsError(f"{flag} {output}: exists and is not a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OptionsError(f"{flag} {output}: cannot create it ({e.strerror or e})") from None
    probe = FileSystems.join(output, f"{_PROBE}{uuid.uuid4().hex[:8]}")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:  # any filesystem's refusal; the message is what the user needs
        detail = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        raise OptionsError(f"{flag} {output}: not writable ({detail})") from None
    return output
