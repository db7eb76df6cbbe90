"""HTTP client for the hosted HunyuanCustom API (WaveSpeedAI).

One `requests.Session`, explicit timeouts, typed errors, and one retry policy:
- GETs (result polls, downloads) retry 408/5xx, timeouts and dropped connections with capped
  exponential back-off, and 429 after its Retry-After;
- the submit is retried only when the server certainly did not take it (the connection could not
  be opened: refused, DNS, connect timeout, TLS handshake; or 429). Any other failure after the
  request may have reached the server raises `SubmitUncertainError`, and so does an error answer
  that is not a clear refusal: a blind retry could create, and bill, a second task.
Every wait goes through `progress.sleep` / `progress.run_cancellable`, so Cancel works anywhere,
and none outlasts the job's deadline (setting timeout_s) when the client is given one.

The key goes only to the server of the root it was set for (`config.same_server`), and the
session takes nothing from `~/.netrc`: requests would add those credentials to a redirect.

Answers are a stranger's text (`_request`, the one place they are read): at most
MAX_ANSWER_BYTES decoded, whole within the request's read time, read in the worker that stops
when the job does, the key redacted from them before anything else sees them. While the API
root is public, no request goes to an internal address (`_AddressGuard`, every redirect hop).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import requests
import urllib3

from . import __version__
from .config import ApiKey, how_to_set_key, same_server
from .download import download_video
from .errors import (
    UNCERTAIN_ADVICE,
    ApiError,
    AuthError,
    DownloadError,
    ForbiddenError,
    InsufficientBalanceError,
    KeyRootError,
    MalformedResponseError,
    PrivateAddressError,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from .prediction import PENDING, TERMINAL_FAILED, Prediction, parse_envelope, parse_prediction
from .progress import CancelEvent, Deadline, NullReporter, Reporter, run_cancellable, sleep


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    read_s: float = 30.0  # JSON calls; the provider answers polls in well under a second
    upload_read_s: float = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # per call, for 5xx/timeouts/drops
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    rate_limit_waits: int = 10  # 429 answers tolerated per call
    max_retry_after_s: float = 120.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * (2 ** attempt))


@dataclass(frozen=True)
class PollSchedule:
    """Poll once a second while a task is young, then slow to `max_interval_s`.

    Completion is noticed on average half an interval after it happens: 0.5 s early on and at
    most 1 s later, with about one request a second at most (core's API nodes poll every 5 s).
    """

    initial_s: float = 1.0
    max_interval_s: float = 2.0
    fast_period_s: float = 30.0
    ramp_s: float = 60.0  # seconds over which the interval grows from initial to max

    def interval(self, elapsed_s: float) -> float:
        if elapsed_s <= self.fast_period_s:
            return self.initial_s
        grown = (elapsed_s - self.fast_period_s) / self.ramp_s
        return min(self.max_interval_s, self.initial_s + grown * (self.max_interval_s - self.initial_s))


@dataclass(frozen=True)
class ClientOptions:
    """Everything about how the client waits, in one object a job can pass through."""

    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    schedule: PollSchedule = PollSchedule()
    # sleep_fn(seconds, on_tick=None); None = sleep in ticks, honouring Cancel. Tests record here.
    sleep_fn: Callable[..., None] | None = None


class _BearerAuth(requests.auth.AuthBase):
    """Adds the key at send time, so it lives in no config object that could be printed, and
    only to requests for the server of `root`, the API root the key is for."""

    def __init__(self, key: ApiKey, root: str):
        self._key = key
        self._root = root

    def __call__(self, r):
        if not same_server(r.url, self._root):
            raise KeyRootError(_key_elsewhere(self._key.source, self._root, r.url))
        r.headers["Authorization"] = "Bearer " + self._key.reveal()
        return r

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"


def _key_elsewhere(source: str, root: str, url: str) -> str:
    where = url.split("?")[0][:200]
    return (f"The API key from {source} is for {root}; it is not sent to another server "
            f"({where}). Set the key for that server, or point api_base back to {root}.")


class _Session(requests.Session):
    """A session that reads no credentials from the environment: with requests' trust_env, a
    ~/.netrc entry for the host an output URL redirects to would be sent there. Proxies
    (HTTPS_PROXY, NO_PROXY...) and a CA bundle (REQUESTS_CA_BUNDLE) still come from the
    environment, read here for each request's own URL (a redirect keeps its first hop's proxy)."""

    def __init__(self):
        super().__init__()
        self.trust_env = False

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        proxies = dict(proxies or {})
        for scheme, proxy in requests.utils.get_environ_proxies(url).items():
            proxies.setdefault(scheme, proxy)
        if verify is True or verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


_BALANCE = re.compile(r"balance|insufficient|credit|quota", re.I)
_RETRY_STATUS = {408, 500, 502, 503, 504, 520, 522, 524}
# Answers to a submit that clearly say no task was created: anything else may have created one.
_REFUSALS = {400, 401, 402, 403, 404, 405, 413, 415, 422, 429}
_REFUSAL_TYPES = (AuthError, ForbiddenError, InsufficientBalanceError, RateLimitError)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _message(resp: requests.Response) -> str:
    """The provider's own message for an error answer, short, or the HTTP reason."""
    try:
        payload = _payload(resp)
        if isinstance(payload, dict):
            data = payload.get("data")
            # Any JSON may come back in an error answer: read only strings, never assume shapes.
            for msg in (payload.get("message"), data.get("error") if isinstance(data, dict) else None):
                if isinstance(msg, str) and msg.strip():
                    return msg.strip()[:500]
    except ValueError:
        pass
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


def _envelope_code(resp: requests.Response) -> int | None:
    """The `code` of the API's own `{code, message, data}` JSON answer; None for anything else
    (a proxy's or a wrong host's page)."""
    try:
        payload = _payload(resp)
    except ValueError:
        return None
    code = payload.get("code") if isinstance(payload, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (safe to resend a submit): the
    connection could not be opened (refused, DNS, connect timeout) or its TLS handshake failed.
    A timeout or reset once the request may be on its way is not this."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):  # NewConnectionError, DNS too
        return True
    return _raised_while_connecting(exc)


# Where urllib3 opens a connection (TCP, proxy tunnel, TLS handshake) before writing a request,
# and where the ssl module runs a handshake: an error raised under these sent nothing.
_CONNECTING = {"_validate_conn", "do_handshake"}


def _raised_while_connecting(exc: BaseException) -> bool:
    """Whether `exc`, or an error it wraps (requests wraps urllib3's, which wraps the ssl or
    socket error), was raised while the connection was being opened. The types alone cannot
    tell: the same SSLError or read timeout can come from a handshake or from an answer."""
    todo, seen = [exc], set()
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name in _CONNECTING:
                return True
            tb = tb.tb_next
        todo += [getattr(err, "reason", None), err.__context__, err.__cause__, *err.args[:1]]
    return False


def _clear_refusal(e: ApiError) -> bool:
    """An error answer to a submit that says no task was created (bad value, key, balance...)."""
    return isinstance(e, _REFUSAL_TYPES) or e.status in _REFUSALS


# --- reading an answer: bounded, redacted, parsed once -------------------------------------------

# Far above any answer the API gives (a poll answer is about 1 KB), low enough that an endless
# answer or a compressed one that inflates to gigabytes is refused after a few MB of memory.
MAX_ANSWER_BYTES = 4 << 20
# Small reads: the cap is checked after each, on the decoded (inflated) size.
_READ_CHUNK = 16 << 10
_NOT_JSON = object()


class _AnswerTimeout(requests.ReadTimeout):
    """The whole answer did not arrive within the request's time (a trickling answer resets the
    socket's own read timeout with every byte)."""


class _Stopped(Exception):
    """The job ended (Cancel, deadline) while its answer was being read."""


def _shut_socket(resp: requests.Response) -> None:
    try:
        resp.raw.shutdown()  # urllib3 >= 2.3: ends a blocked read from another thread
    except (AttributeError, ValueError, RuntimeError, OSError):
        pass  # older urllib3, or already closed: the read ends at its own timeout


def _read_answer(resp: requests.Response, cancel: CancelEvent, limit: int) -> bytes:
    """The body, decoded (gzip...), at most `limit` bytes; stops when `cancel` is set (the job
    ended), so no reading thread outlives its job."""
    cancel.on_set(lambda: _shut_socket(resp))
    parts, got = [], 0
    try:
        for chunk in resp.iter_content(_READ_CHUNK):
            if cancel.is_set():
                raise _Stopped()
            got += len(chunk)
            if got > limit:
                raise MalformedResponseError(
                    f"The API's answer (HTTP {resp.status_code}) is larger than {limit} bytes; "
                    "stopped reading it. Answers of this API are a few KB: something between "
                    "here and the API is broken.", status=resp.status_code)
            parts.append(chunk)
    finally:
        resp.close()
    return b"".join(parts)


def _parse_json(body: bytes) -> Any:
    """The JSON of a body, or _NOT_JSON (not JSON, or nested too deeply to parse)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _redacted_answer(resp: requests.Response, body: bytes, key: ApiKey) -> None:
    """The one place provider text enters the pack: the key (and so its `Bearer` form) is
    replaced in the body, its JSON strings and the reason phrase before anything stores, prints
    or raises them. The parsed JSON is kept on the response (`_payload`)."""
    secret = key.reveal()
    body = body.replace(secret.encode(), b"***")
    payload = _parse_json(body)
    if payload is not _NOT_JSON:
        # JSON may spell the key with escapes (\u0041...): compare its decoded strings.
        try:
            text = json.dumps(payload)
            escaped = json.dumps(secret)[1:-1]
            if escaped in text:
                payload = _parse_json(text.replace(escaped, "***").encode())
                body = text.replace(escaped, "***").encode()
        except (ValueError, RecursionError):
            payload = _NOT_JSON
    if resp.reason:
        resp.reason = key.redact(resp.reason)
    resp._content = body
    resp._content_consumed = True
    resp._hc_payload = payload


def _payload(resp: requests.Response) -> Any:
    """The answer's JSON (parsed once, when read); ValueError when it is not JSON."""
    payload = getattr(resp, "_hc_payload", None)
    if payload is None:
        payload = resp._hc_payload = _parse_json(resp.content or b"")
    if payload is _NOT_JSON:
        raise ValueError("not JSON")
    return payload


# --- where outputs may be fetched from ------------------------------------------------------------


def _addresses(host: str) -> list:
    """The IP addresses a host name stands for (the literal itself for an address); empty when
    it cannot be resolved here (the connection, or a proxy, then decides)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return []
    out = []
    for info in infos:
        try:
            out.append(ipaddress.ip_address(info[4][0].split("%")[0]))
        except ValueError:
            continue
    return out


def _internal(ip) -> bool:
    """Loopback, private, link-local, shared, reserved, multicast...: not a public address."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class _AddressGuard(requests.adapters.HTTPAdapter):
    """Checks every request, each redirect hop included, before it is sent: while the API root is
    public, no URL the API hands out (an output, a redirect) may reach this machine's own or
    its network's internal addresses."""

    def __init__(self, client: WaveSpeedClient):
        super().__init__()
        self._client = client

    def send(self, request, *args, **kwargs):
        self._client._check_address(request.url)
        return super().send(request, *args, **kwargs)


def _check_output_url(url: str) -> None:
    """A clear error for an output URL that cannot be fetched at all (a host name too long...)."""
    try:
        parts = urllib3.util.parse_url(url)
        host = parts.host or ""
    except (urllib3.exceptions.LocationParseError, ValueError) as e:
        raise DownloadError(f"The API gave an output URL that is not a valid URL ({_short(url)}): "
                            f"{str(e)[-120:]}") from None
    if not host:
        raise DownloadError(f"The API gave an output URL with no host: {_short(url)}")


def _short(text: str, n: int = 120) -> str:
    return text if len(text) <= n else text[:n] + "..."


class WaveSpeedClient:
    def __init__(
        self,
        api_key: ApiKey,
        api_base: str,
        *,
        reporter: Reporter | None = None,
        options: ClientOptions = ClientOptions(),
        key_root: str | None = None,
        deadline: Deadline | None = None,
    ):
        """`key_root`: the API root the key is for when the key itself does not say (a key from
        the environment is for the configured root); default: `api_base`. `deadline`: when the
        whole job must be over (setting timeout_s); no wait, retry or download outlasts it."""
        self.api_base = api_base.rstrip("/")
        self.key_root = (api_key.root or key_root or self.api_base).rstrip("/")
        if not same_server(self.api_base, self.key_root):
            raise KeyRootError(_key_elsewhere(api_key.source, self.key_root, self.api_base))
        self.reporter = reporter or NullReporter()
        self.timeouts = options.timeouts
        self.retry = options.retry
        self.schedule = options.schedule
        self.deadline = deadline
        sleep_fn = options.sleep_fn
        self.session = _Session()
        self.session.auth = _BearerAuth(api_key, self.key_root)
        guard = _AddressGuard(self)
        self.session.mount("http://", guard)
        self.session.mount("https://", guard)
        self._api_key = api_key  # only to redact it from what the provider answers
        self._root_internal: bool | None = None  # whether the API root is itself internal
        self.session.headers["User-Agent"] = f"ComfyUI-HunyuanCustom/{__version__}"
        # The default sleeps in short ticks, honours Cancel and calls on_tick about once a second.
        self._sleep = sleep_fn or (lambda s, on_tick=None: sleep(s, self.reporter, on_tick))
        self.requests_made = 0
        self._key_source = api_key.source
        # Whether the last submit may have reached the server: set before each of its POSTs goes
        # out, cleared when that attempt certainly created nothing (never sent, or answered 429).
        self.submit_in_doubt = False

    def __repr__(self) -> str:
        return f"WaveSpeedClient({self.api_base!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one place for sending, retrying and classifying ----------------------------------------

    def _timed_out(self, doing: str, task_id: str | None = None) -> TaskTimeoutError:
        d = self.deadline
        after = f"Stopped after {int(d.budget_s)} s (setting timeout_s)" if d else "Stopped"
        if task_id:
            tail = (" The task may still finish on the provider; its output stays available for "
                    "about 7 days, and running the job again resumes it without paying again.")
        else:
            tail = ""
        return TaskTimeoutError(f"{after} {doing}.{tail}", task_id=task_id,
                                elapsed_s=d.elapsed() if d else None)

    def _pause(self, seconds: float, doing: str, task_id: str | None = None, on_tick=None) -> None:
        """A retry or poll wait; one that would end past the deadline stops the job now."""
        if self.deadline is not None and seconds >= self.deadline.left():
            raise self._timed_out(doing, task_id)
        self._sleep(seconds, on_tick)

    def _request(self, cancel: CancelEvent, method: str, url: str, timeout: tuple,
                 kwargs: dict) -> requests.Response:
        """One request and its whole answer, read in this (worker) thread: bounded in size
        (MAX_ANSWER_BYTES, decoded), ended when the job ends, the key redacted from it."""
        resp = self.session.request(method, url, timeout=timeout, stream=True, **kwargs)
        body = _read_answer(resp, cancel, MAX_ANSWER_BYTES)
        _redacted_answer(resp, body, self._api_key)
        return resp

    def _send(self, method: str, url: str, *, idempotent: bool, read_timeout: float | None = None,
              task_id: str | None = None, **kwargs) -> requests.Response:
        if not same_server(url, self.key_root):  # checked again by the auth hook
            raise KeyRootError(_key_elsewhere(self._key_source, self.key_root, url))
        doing = ("while waiting for the API" if idempotent
                 else "before the task was submitted: nothing was billed")
        failures = 0
        rate_limited = 0
        while True:
            self.reporter.check_interrupt()
            connect_s, read_s = self.timeouts.connect_s, read_timeout or self.timeouts.read_s
            # The whole answer, not only each socket read, must come within read_s: an answer
            # trickling a byte at a time would otherwise hold a submit for ever.
            limit = Deadline.after(read_s)
            job_over = None
            if self.deadline is not None:
                if self.deadline.left() <= 0:
                    raise self._timed_out(doing, task_id)
                connect_s = self.deadline.bound(connect_s)
                # A submit on its way keeps its full read time: cutting it would lose a task id.
                if idempotent:
                    read_s = self.deadline.bound(read_s)
                    if self.deadline.at < limit.at:
                        limit, job_over = self.deadline, self.deadline
            try:
                self.requests_made += 1
                if not idempotent:
                    self.submit_in_doubt = True
                resp = run_cancellable(
                    lambda cancel, t=(connect_s, read_s): self._request(cancel, method, url, t, kwargs),
                    self.reporter, deadline=limit,
                    on_deadline=lambda job_over=job_over, r=read_s: (
                        self._timed_out(doing, task_id) if job_over is not None
                        else _AnswerTimeout(f"no full answer within {r:g} s")),
                )
            except MalformedResponseError as e:  # over the size cap
                if not idempotent:
                    raise SubmitUncertainError(f"{e} The submit was sent; " + UNCERTAIN_ADVICE,
                                               status=e.status) from None
                raise
            except requests.RequestException as e:
                kind = type(e).__name__
                if not idempotent:
                    if isinstance(e, _AnswerTimeout):
                        raise SubmitUncertainError(
                            f"The API's answer to the submit did not arrive in full within "
                            f"{read_s:g} s (ReadTimeout); " + UNCERTAIN_ADVICE) from None
                    if not _never_sent(e):
                        raise SubmitUncertainError(
                            f"The connection failed after the request was sent ({kind}); "
                            + UNCERTAIN_ADVICE) from None
                    self.submit_in_doubt = False
                failures += 1
                if failures >= self.retry.attempts:
                    raise ServerError(f"Could not reach the API at {self.api_base} after "
                                      f"{failures} tries ({kind}).") from None
                self._pause(self.retry.backoff(failures - 1), doing, task_id)
                continue

            status = resp.status_code
            if status == 200 and method == "GET":
                # A poll's HTTP 200 carrying the envelope's own 5xx is the same transient failure
                # as an HTTP 5xx: retried alike. (A submit keeps its own rules, in `submit`.)
                code = _envelope_code(resp)
                if code is not None and (code in _RETRY_STATUS or code >= 500):
                    status = code
            if status == 429:
                if not idempotent:
                    self.submit_in_doubt = False  # refused: nothing was created
                rate_limited += 1
                if rate_limited > self.retry.rate_limit_waits:
                    raise RateLimitError("The API kept answering 429 Too Many Requests: your "
                                         "account's rate or concurrency limit is reached. Wait "
                                         "and try again, or raise your account level.",
                                         status=429)
                wait = _retry_after(resp)
                wait = self.retry.backoff(rate_limited - 1) if wait is None else wait
                wait = min(wait, self.retry.max_retry_after_s)
                self.reporter.status(f"Rate limited by the API; retrying in {math.ceil(wait)} s")
                self._pause(wait, doing, task_id)
                continue
            if status in _RETRY_STATUS or status >= 500:
                if not idempotent:
                    raise SubmitUncertainError(
                        f"The API answered HTTP {status} to the submit; " + UNCERTAIN_ADVICE,
                        status=status)
                failures += 1
                if failures >= self.retry.attempts:
                    raise ServerError(f"The API kept failing (HTTP {status}: {_message(resp)}) "
                                      f"after {failures} tries.", status=status)
                wait = _retry_after(resp)
                self._pause(self.retry.backoff(failures - 1) if wait is None else
                            min(wait, self.retry.max_retry_after_s), doing, task_id)
                continue
            return resp

    def _json(self, resp: requests.Response) -> Any:
        """Classify a final answer: raise typed errors for 4xx, parse JSON for 2xx."""
        status = resp.status_code
        if status == 401:
            raise AuthError("The WaveSpeedAI API key was refused (401 Unauthorized). "
                            + how_to_set_key(), status=401)
        if status == 402 or (400 <= status < 500 and _BALANCE.search(_message(resp))):
            raise InsufficientBalanceError(
                f"Insufficient balance on your WaveSpeedAI account: top up, then run again. "
                f"(Provider said: {_message(resp)})", status=status)
        if status == 403:
            raise ForbiddenError(f"Access denied (403 Forbidden): the account may be suspended or "
                                 f"not allowed to use this model. (Provider said: {_message(resp)})",
                                 status=403)
        if status >= 400:
            raise ApiError(f"The API refused the request: {_message(resp)}", status=status)
        try:
            payload = _payload(resp)
        except ValueError:
            ctype = resp.headers.get("Content-Type", "?")
            snippet = resp.text[:80].replace("\n", " ")
            raise MalformedResponseError(f"The API answered HTTP {status} with something that is "
                                         f"not JSON ({ctype}): {snippet!r}", status=status) from None
        # The envelope's own code can carry the error even when HTTP says 200.
        if isinstance(payload, dict) and isinstance(payload.get("code"), int) and payload["code"] >= 400:
            code = payload["code"]
            fake = requests.Response()
            fake.status_code = code
            fake._content = json.dumps(payload).encode()
            return self._json(fake)
        return payload

    # --- endpoints ------------------------------------------------------------------------------

    def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload bytes through the media endpoint; return the URL the API can read them from."""
        resp = self._send("POST", f"{self.api_base}/media/upload/binary", idempotent=True,
                          read_timeout=self.timeouts.upload_read_s,
                          files={"file": (filename, data, content_type)})
        data_obj = parse_envelope(self._json(resp))
        url = data_obj.get("download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise MalformedResponseError("The media upload answer has no 'data.download_url'.")
        return url

    def submit(self, model_id: str, body: dict) -> Prediction:
        self.submit_in_doubt = False
        resp = self._send("POST", f"{self.api_base}/{model_id}", idempotent=False, json=body)
        try:
            payload = self._json(resp)
        except MalformedResponseError:
            raise
        except ApiError as e:
            if _clear_refusal(e):
                raise
            # E.g. HTTP 200 with {"code": 500}: a failure that does not say no task was made.
            raise SubmitUncertainError(
                f"The API answered the submit with an error that does not say the task was "
                f"refused ({e}); " + UNCERTAIN_ADVICE, status=e.status) from None
        try:
            return parse_prediction(payload)
        except MalformedResponseError as e:
            raise MalformedResponseError(f"{e} The submit may have created a task; check your "
                                         "WaveSpeedAI dashboard before running again.") from None

    def result(self, task_id: str) -> Prediction:
        try:
            resp = self._send("GET", f"{self.api_base}/predictions/{task_id}/result", idempotent=True,
                              task_id=task_id)
            try:
                payload = self._json(resp)
            except ApiError as e:
                # Only the API's own answer (not a proxy's 404 page) says the task is gone.
                if e.status == 404 and _envelope_code(resp) == 404:
                    raise TaskNotFoundError(f"The API at {self.api_base} does not know this task "
                                            f"({_message(resp)}).", status=404, task_id=task_id) from None
                raise
            pred = parse_prediction(payload)
            if pred.id != task_id:  # never take another task's state (or video) for this one
                raise MalformedResponseError(
                    f"The API answered a poll for task {task_id} with the state of task "
                    f"{pred.id[:100]!r}; the answer was not used.", task_id=task_id)
            return pred
        except ApiError as e:
            if e.task_id:
                raise
            # Same error, with the task id the user needs to find or resume the task.
            raise type(e)(str(e), status=e.status, task_id=task_id) from None

    def download(self, url: str, dest, *, max_bytes: int, task_id: str | None = None):
        """Stream an output to `dest` atomically (see download.py); return its VideoInfo."""
        try:
            _check_output_url(url)
            return download_video(self.session, url, dest, max_bytes=max_bytes,
                                  reporter=self.reporter, task_id=task_id,
                                  backoff=self.retry.backoff, sleep_fn=self._sleep,
                                  timeout=(self.timeouts.connect_s, max(60.0, self.timeouts.read_s)),
                                  deadline=self.deadline)
        except (urllib3.exceptions.LocationParseError, requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
            # A redirect hop to an address that is not a URL (a host name too long...).
            raise DownloadError(f"The output URL led to an address that is not a valid URL: "
                                f"{_short(str(e))}", task_id=task_id) from None
        except DownloadError as e:
            if e.task_id or not task_id:
                raise
            raise type(e)(str(e), status=e.status, task_id=task_id) from None

    def _check_address(self, url: str) -> None:
        """Refuse a request to an internal address while the API root is public (see
        `_AddressGuard`): every address the host name resolves to is checked."""
        if same_server(url, self.api_base):
            return
        if self._root_internal is None:
            root_host = urllib3.util.parse_url(self.api_base).host or ""
            self._root_internal = any(_internal(ip) for ip in _addresses(root_host))
        if self._root_internal:  # a local or in-house API (the tests' loopback server)
            return
        try:
            host = urllib3.util.parse_url(url).host or ""
        except (urllib3.exceptions.LocationParseError, ValueError):
            return  # requests refuses it itself
        for ip in _addresses(host):
            if _internal(ip):
                raise PrivateAddressError(
                    f"The API gave an output URL (or a redirect) to {_short(host, 80)}, an internal "
                    f"address ({ip}: loopback, private or link-local), while the API at "
                    f"{self.api_base} is public: not fetched, so an API answer cannot make this "
                    "machine read its own or its network's internal services.")

    def wait(self, task_id: str, *, timeout_s: float,
             on_update: Callable[[Prediction, float], None] | None = None) -> Prediction:
        """Poll until the task completes; raise TaskFailedError/TaskTimeoutError otherwise.
        Gives up after `timeout_s` or at the client's deadline, whichever comes first."""
        start = time.monotonic()
        if self.deadline is not None:
            timeout_s = min(timeout_s, self.deadline.at - start)
        while True:
            pred = self.result(task_id)
            elapsed = time.monotonic() - start
            if on_update is not None:
                on_update(pred, elapsed)
            if pred.status == "completed":
                return pred
            if pred.status in TERMINAL_FAILED:
                reason = pred.error or "the provider gave no reason"
                raise TaskFailedError(f"The task {pred.status}: {reason}", task_id=task_id)
            # Unknown statuses are treated as pending: the provider may add e.g. "queued".
            interval = self.schedule.interval(elapsed)
            if elapsed + interval > timeout_s:
                budget = self.deadline.budget_s if self.deadline else timeout_s
                raise TaskTimeoutError(
                    f"Stopped waiting after {int(budget)} s (status {pred.status}). The task may "
                    "still finish on the provider; its output stays available for about 7 days.",
                    task_id=task_id, elapsed_s=self.deadline.elapsed() if self.deadline else elapsed)
            tick = (lambda p=pred: on_update(p, time.monotonic() - start)) if on_update else None
            self._sleep(interval, tick)


__all__ = ["WaveSpeedClient", "ClientOptions", "Timeouts", "RetryPolicy", "PollSchedule", "PENDING"]
