"""The ``stampflow`` command: one entry point, one subcommand per job.

Each subcommand lives in the module that implements it and exposes ``register(subparsers, name)``,
which adds its parser and sets ``func`` to a callable taking the parsed namespace and returning an
exit code. Modules are imported lazily by name so ``stampflow --help`` stays fast and does not
import TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: subcommand -> (module that registers it, one-line help). Order is the order ``--help`` shows.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.run_job", "classify alerts: probabilities, sky density, SN candidates"),
    "train": ("model.train", "train, evaluate and export a model on labelled alerts"),
    "evaluate": ("model.train", "evaluate an exported model on labelled alerts"),
    "import-alerce": ("model.alerce", "import an ALeRCE TF1 checkpoint as a stampflow model"),
    "export-onnx": (
        "model.onnx_export",
        "export a model as one ONNX graph (onnxruntime, TensorRT)",
    ),
    "compare": ("model.compare", "agreement of a model with a reference model on real alerts"),
    "label": ("model.label", "labels.csv for real alerts by catalogue cross-match (as ALeRCE did)"),
    "gap": ("simulator.gap", "domain-gap report: simulated vs real alerts (features, images, AUC)"),
    "bench": ("bench.cli", "measure throughput per stage and end to end against the baseline"),
    "publish": ("pipeline.publish", "replay alert files into a Pub/Sub topic"),
    "decode": ("pipeline.decode_job", "decode alert files/archives and summarise them (no model)"),
    "simulate": ("simulator.cli", "write realistic simulated ZTF alerts with labels"),
    "montage": ("simulator.cli", "draw science/reference/difference triplets per class"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only the chosen subcommand's module is imported.

    Parameters
    ----------
    argv
        Command-line arguments (without the program name), used to pick the subcommand to import.

    Returns
    -------
    argparse.ArgumentParser
        The parser with every subcommand listed.
    """
    parser = argparse.ArgumentParser(
        prog="stampflow",
        description="Classify ZTF alerts from their first detection (ALeRCE stamp classifier).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(sub, name)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


#: Subcommands that load TensorFlow (its start-up chatter is silenced unless --verbose).
_TF_COMMANDS = frozenset(
    {"run", "train", "evaluate", "import-alerce", "bench", "compare", "export-onnx"}
)
#: Subcommands that load TensorFlow only when given one of these flags.
_TF_WITH_FLAG = {"gap": "--reference"}


def silence_tensorflow_startup() -> None:
    """Import TensorFlow with stderr muted at the file-descriptor level.

    TensorFlow's C++ runtime prints CUDA probing lines ("Could not find cuda drivers", "failed
    call to cuInit") before its log level applies, straight to fd 2, so only redirecting the
    descriptor during the import and the first device query keeps a normal run quiet.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` (``--flag V`` or ``--flag=V``), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stampflow``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    needs_tf = chosen in _TF_COMMANDS or _TF_WITH_FLAG.get(chosen or "", "\0") in argv
    if chosen == "run" and _flag_value(argv, "--runtime") == "null":
        needs_tf = False  # fixed probabilities: the point is to run without TensorFlow
    if needs_tf and "--verbose" not in argv:
        silence_tensorflow_startup()
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from model.remote import use_emulator_credentials

        use_emulator_credentials()  # an emulator needs none: spare Beam's 30 s search for them
    parser = build_parser(argv)
    # Jobs that run a Beam pipeline accept Beam's own options (--runner, --project, ...) unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam_args_ok", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args = extra
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    from model.handler import ModelDirError
    from pipeline.errors import UserError

    try:
        return int(args.func(args) or 0)
    except (ModelDirError, UserError) as e:  # a user's mistake, not a bug: no traceback
        print(f"stampflow {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
