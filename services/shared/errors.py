"""Domain errors. Code inside the services raises these; servicers never build statuses by hand.

The mapping to gRPC status codes lives in `services.shared.grpc_status`, the one place that
knows about gRPC.
"""


# Names a caller sent are echoed in messages at most this long: a long name must not swell a
# status past what proxies carry (Envoy answers 502 to oversized trailers).
SHOWN_NAME_CHARS = 64


def shown(name: str) -> str:
    """A caller's name as a message shows it: quoted, and cut short."""
    if len(name) > SHOWN_NAME_CHARS:
        return repr(name[:SHOWN_NAME_CHARS]) + f" (cut from {len(name)} characters)"
    return repr(name)


class RemindError(Exception):
    """Base class: the message is shown to the caller, so it must say what to do.

    `retry_after_seconds` tells a caller refused for load when trying again makes sense.
    """

    def __init__(self, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class InvalidInput(RemindError):
    """The request or its media is malformed (not an image, corrupt GIF, bad field)."""


class NotFound(RemindError):
    """A named job, template, media or upload does not exist (for this tenant)."""


class TooLarge(RemindError):
    """Input over a size, duration or resolution limit, or a queue is full."""


class FailedPrecondition(RemindError):
    """The input is well-formed but cannot be used (no face in the photo, job already ended)."""


class AlreadyExists(RemindError):
    """A resource with that name exists and we never overwrite."""


class Unavailable(RemindError):
    """A dependency (model service, storage) cannot be reached right now; retrying may help."""


class EngineNotReady(RemindError):
    """An engine cannot serve: weights missing or invalid."""


class Unauthenticated(RemindError):
    """No credentials, or credentials that match no tenant."""


class Misconfigured(RemindError):
    """A service's settings or files cannot work (a missing key, an invalid certificate):
    raised at start-up, which stops the service with this message."""


class PermissionDenied(RemindError):
    """The caller is known but may not do this: a storage reference without a valid grant."""
