"""A shim for Beam's Python direct runner: Pub/Sub pulls with a short deadline.

The direct runner reads Pub/Sub in its single scheduling loop with a 30 s pull deadline and fires
no processing-time timers while a pull waits, so on a quiet subscription the last first
detections waited up to 30 s past their hold. :func:`shorten_direct_runner_pulls` wraps the
runner's subscriber client so that pulls wait at most :data:`LOCAL_PULL_TIMEOUT_S`. Only the
local runner is touched (``stampflow run --streaming`` calls it for the direct runners);
Dataflow reads Pub/Sub its own way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LOCAL_PULL_TIMEOUT_S", "ShortPull", "shorten_direct_runner_pulls"]

#: Pub/Sub pull deadline on those runners [s]; the emulator answers an empty pull ~1 s before it.
LOCAL_PULL_TIMEOUT_S = 2.0


class ShortPull:
    """A SubscriberClient whose ``pull`` waits at most ``timeout_s`` (everything else delegated).

    The emulator answers an idle pull with no messages just before the deadline; real Pub/Sub may
    instead raise ``DeadlineExceeded``, which is answered here as an empty pull too (the direct
    runner would otherwise fail the job).
    """

    def __init__(self, client: Any, timeout_s: float) -> None:
        self._client, self._timeout_s = client, timeout_s

    def pull(self, *args: Any, **kwargs: Any) -> Any:
        from google.api_core.exceptions import DeadlineExceeded
        from google.cloud.pubsub_v1.types import PullResponse

        kwargs["timeout"] = min(kwargs.get("timeout") or self._timeout_s, self._timeout_s)
        try:
            return self._client.pull(*args, **kwargs)
        except DeadlineExceeded:
            return PullResponse()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def shorten_direct_runner_pulls(timeout_s: float = LOCAL_PULL_TIMEOUT_S) -> bool:
    """Make the Python direct runner's Pub/Sub reader pull with a short deadline.

    The direct runner reads Pub/Sub in its single scheduling loop with a 30 s pull deadline and
    fires no processing-time timers while a pull waits. When the subscription goes quiet (the
    end of a night, a lull), the last first detections then wait up to 30 s past their hold:
    measured p99 33 s at any publish rate. With a 2 s deadline the loop comes round every ~1 s.
    Only the local runner is affected; Dataflow reads Pub/Sub its own way.

    Returns
    -------
    bool
        True when the runner's reader was found and wrapped (idempotent).
    """
    try:
        from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator
    except ImportError:  # a Beam without the Python direct runner's evaluator
        return False
    if getattr(_PubSubReadEvaluator, "_stampflow_short_pull", False):
        return True
    original = getattr(_PubSubReadEvaluator, "_get_subscriber_client", None)
    if original is None:
        return False

    def short(cls: Any, transform: Any) -> ShortPull:
        return ShortPull(original.__func__(cls, transform), timeout_s)

    _PubSubReadEvaluator._get_subscriber_client = classmethod(short)
    _PubSubReadEvaluator._stampflow_short_pull = True
    return True
