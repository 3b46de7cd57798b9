"""Streaming mode (``stampflow run --streaming``): placeholder until the streaming job lands."""

from __future__ import annotations

import argparse
from typing import Any


def add_streaming_arguments(group: Any) -> None:
    """Add the streaming flags to ``stampflow run``."""
    group.add_argument("--input-subscription", default=None, help="projects/P/subscriptions/S")


def run_streaming(args: argparse.Namespace, beam_args: list[str], test_pipeline=None) -> dict:
    """Run the streaming job."""
    raise SystemExit("streaming mode is not implemented yet")
