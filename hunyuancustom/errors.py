"""Typed errors. Every message is written for the person at the graph, never includes the key."""

from __future__ import annotations


class HunyuanCustomError(Exception):
    """Base of every error this package raises on purpose."""


class ValidationError(HunyuanCustomError, ValueError):
    """A value is missing, of the wrong type or out of range. Raised before any network/GPU work."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ConfigError(HunyuanCustomError):
    """Settings or the API key are missing or unreadable."""


class MissingApiKeyError(ConfigError):
    pass


class KeyRootError(ConfigError):
    """The API key was set for another server than the one a request would go to: not sent."""


class EngineError(HunyuanCustomError, RuntimeError):
    """The engine running the model (core's sampler, a multi-GPU engine) handed the pack's patches a
    call they cannot run correctly: refused instead of a silently different video."""


class Interrupted(HunyuanCustomError):
    """The user cancelled (ComfyUI's Cancel, Ctrl-C in the CLI)."""


# --- the hosted API -----------------------------------------------------------------------------


class ApiError(HunyuanCustomError):
    """The provider answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, task_id: str | None = None):
        self.status = status
        self.task_id = task_id
        if task_id and task_id not in message:
            message = f"{message} (task id {task_id})"
        super().__init__(message)


class AuthError(ApiError):
    """401: the key is missing, wrong or revoked."""


class ForbiddenError(ApiError):
    """403: the account may not use this API (e.g. suspended)."""


class InsufficientBalanceError(ApiError):
    """The account has no credit left for this task."""


class RateLimitError(ApiError):
    """429 that did not clear within the retry budget."""


class ServerError(ApiError):
    """5xx, timeouts or dropped connections that did not clear within the retry budget."""


class MalformedResponseError(ApiError):
    """The answer was not the documented JSON envelope."""


class SubmitUncertainError(ApiError):
    """The submit may have reached the server but its answer was lost.

    Never retried automatically: a second submit could create and bill a second task.
    """


# How every SubmitUncertainError message ends: what it means and what the user should do.
UNCERTAIN_ADVICE = ("the task may or may not have been created. It was not resubmitted, so you are "
                    "not billed twice: check your WaveSpeedAI dashboard before running again.")


class TaskNotFoundError(ApiError):
    """The API itself (its JSON envelope, not a proxy's page) answered 404 for a task id."""


class TaskFailedError(ApiError):
    """The task ended with status failed (or cancelled/timeout) on the provider."""


class TaskTimeoutError(ApiError):
    """Our overall wait ran out; the task may still finish on the provider. `elapsed_s`: how long
    the job had run when it gave up, by the client's own clock (None where not measured)."""

    def __init__(self, message: str, *, status: int | None = None, task_id: str | None = None,
                 elapsed_s: float | None = None):
        super().__init__(message, status=status, task_id=task_id)
        self.elapsed_s = elapsed_s


class NSFWError(ApiError):
    """The safety checker flagged the output and no video was delivered."""


class DownloadError(ApiError):
    """The output could not be downloaded or is not a readable video."""


class PrivateAddressError(DownloadError):
    """An output URL, or a redirect, leads to an internal address while the API root is public."""


class OutputExpiredError(DownloadError):
    """The output URL no longer serves the file (the provider keeps outputs about 7 days)."""
