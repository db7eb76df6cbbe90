"""Where the pack keeps its data, its settings and the API key.

Data folder, first match wins:
1. `HUNYUANCUSTOM_DATA_DIR` (tests, unusual installs);
2. inside a running ComfyUI: `<ComfyUI user dir>/hunyuancustom`;
3. the pack installed at `<ComfyUI>/custom_nodes/<pack>`: `<ComfyUI>/user/hunyuancustom`, so the
   CLI run from an installed pack finds the key the nodes use;
4. otherwise `~/.config/hunyuancustom`.

The key comes from `WAVESPEED_API_KEY` or the file `api_key` in the data folder. It is held in
an `ApiKey`, whose str/repr never show it; only the HTTP auth hook reads the secret.

A key belongs to the server of the API root it was set for: the key file written by
`save_api_key` records the `api_base` in force then (`{"key": ..., "api_base": ...}`); a key
from the environment, or a file holding only the key (written by hand), is for the configured
`api_base` of the run. The client never sends a key to another server (`same_server`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .atomic import replacing
from .errors import ConfigError, MissingApiKeyError

DEFAULT_API_BASE = "https://api.wavespeed.ai/api/v2"
KEY_ENV = "WAVESPEED_API_KEY"
BASE_ENV = "WAVESPEED_API_BASE"
KEY_ROUTES_ENV = "HUNYUANCUSTOM_KEY_ROUTES"  # "off": no key management over ComfyUI's HTTP server
KEY_FILE_NAME = "api_key"
SETTINGS_FILE_NAME = "settings.json"

_PACK_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    env = os.environ.get("HUNYUANCUSTOM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    folder_paths = sys.modules.get("folder_paths")  # only present inside ComfyUI
    if folder_paths is not None and hasattr(folder_paths, "get_user_directory"):
        return Path(folder_paths.get_user_directory()) / "hunyuancustom"
    if _PACK_ROOT.parent.name == "custom_nodes" and (_PACK_ROOT.parent.parent / "main.py").exists():
        return _PACK_ROOT.parent.parent / "user" / "hunyuancustom"
    return Path.home() / ".config" / "hunyuancustom"


def key_file_path() -> Path:
    return data_dir() / KEY_FILE_NAME


def settings_file_path() -> Path:
    return data_dir() / SETTINGS_FILE_NAME


KEY_CHARS = "printable ASCII (letters, digits and punctuation) without spaces"


class ApiKey:
    """A secret that does not print itself. `root`: the API root it was set for; None = whatever
    root the run is configured with (a key from the environment, or a hand-written key file)."""

    __slots__ = ("_value", "source", "root")

    def __init__(self, value: str, source: str, root: str | None = None):
        value = value.strip()
        if not value:
            raise MissingApiKeyError(f"The API key from {source} is empty.")
        if any(c.isspace() for c in value):
            raise ConfigError(f"The API key from {source} contains whitespace; check it. "
                              f"Allowed: {KEY_CHARS}.")
        # An HTTP header carries Latin-1 at most, and API keys are plain ASCII: anything else
        # (a smart quote, a Cyrillic look-alike) would fail every run with an encoding error.
        if not all("!" <= c <= "~" for c in value):
            raise ConfigError(f"The API key from {source} contains characters an API key does "
                              f"not have; check it. Allowed: {KEY_CHARS}.")
        self._value = value
        self.source = source
        self.root = root.rstrip("/") if root else None

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """`text` with this key (bare, or in its `Bearer <key>` form) replaced by ***."""
        return text.replace(self._value, "***") if self._value in text else text

    @property
    def last4(self) -> str:
        return self._value[-4:]

    def __repr__(self) -> str:
        return f"ApiKey(<hidden>, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a cache or a history entry
        raise TypeError("ApiKey cannot be pickled")


def how_to_set_key() -> str:
    return (
        f"Set the environment variable {KEY_ENV} before starting ComfyUI, enter the key in "
        f"ComfyUI's Settings (HunyuanCustom > API key), or write it into the file "
        f"{key_file_path()}. Get a key from your WaveSpeedAI account's API keys page."
    )


def load_api_key() -> ApiKey:
    """The key from the environment, else from the key file; a clear error when neither has one."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return ApiKey(env, f"the environment variable {KEY_ENV}")
    path = key_file_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingApiKeyError("No WaveSpeedAI API key is set. " + how_to_set_key()) from None
    except OSError as e:
        raise ConfigError(f"Cannot read the API key file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The API key file {path} is not text; write the key into it again. "
                          f"Allowed: {KEY_CHARS}.") from None
    return _key_from_file(text, path)


def _key_from_file(text: str, path: Path) -> ApiKey:
    """A file written by `save_api_key` (JSON: the key and its root) or by hand (the key only)."""
    source = f"the key file {path}"
    if not text.strip().startswith("{"):
        return ApiKey(text, source)
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    root = obj.get("api_base") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str) or not (
            root is None or (isinstance(root, str) and root.startswith(("http://", "https://")))):
        raise ConfigError(f"The API key file {path} is damaged; set the key again (or write only "
                          "the key into the file).")
    return ApiKey(obj["key"], source, root=root)


def same_server(a: str, b: str) -> bool:
    """Whether two URLs name the same server (scheme, host and port): where a key may go."""
    def origin(url: str) -> tuple:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return ("invalid", url)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)
    return origin(a) == origin(b)


def key_status() -> dict:
    """What a UI may show about the key: whether one is set, where from, its last 4 characters."""
    try:
        key = load_api_key()
    except ConfigError:
        return {"set": False, "source": None, "last4": ""}
    source = "env" if key.source.startswith("the environment") else "file"
    return {"set": True, "source": source, "last4": key.last4}


def save_api_key(value: str, api_base: str | None = None) -> None:
    """Store the key in the key file (owner-readable only), replacing any older one atomically,
    with the API root it is for: `api_base`, by default the one configured now."""
    key = ApiKey(value, "the settings dialog")  # same checks as on load
    root = (api_base or load_settings().api_base).rstrip("/")
    text = json.dumps({"key": key.reveal(), "api_base": root}, separators=(",", ":"))
    with replacing(key_file_path(), suffix=".tmp", mode=0o600) as tmp:
        tmp.write_bytes(text.encode("ascii"))


def delete_api_key() -> bool:
    try:
        key_file_path().unlink()
        return True
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Settings:
    """Client settings; env > settings file > default."""

    api_base: str = DEFAULT_API_BASE
    timeout_s: float = 1800.0  # overall wait for one task
    max_download_bytes: int = 4 * 1024**3
    upload_max_age_s: float = 24 * 3600.0  # used by the upload cache (journal)
    concurrency: int = 2  # batch jobs in flight; the provider's lowest account level allows 2
    # Cap on the decoded frames tensor (float32): 4x the largest output the API makes (129
    # frames of 1280x720 = 1.33 GiB), so a file claiming thousands of frames is refused up front.
    max_decoded_bytes: int = 4 * 129 * 1280 * 720 * 3 * 4


def load_settings() -> Settings:
    path = settings_file_path()
    raw: dict = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"Cannot read settings file {path}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"Settings file {path} must hold a JSON object.")
    fields = Settings.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"Settings file {path}: unknown setting {unknown[0]!r}; "
                          f"known: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        want = type(getattr(Settings, name))
        if isinstance(value, bool) or not isinstance(value, (want, int) if want is float else want):
            raise ConfigError(f"Settings file {path}: {name} must be a {want.__name__}")
        values[name] = want(value)
        _check_number(name, values[name], f"Settings file {path}: ")
    env_base = os.environ.get(BASE_ENV, "").strip()
    if env_base:
        values["api_base"] = env_base
    env_timeout = os.environ.get(TIMEOUT_ENV, "").strip()
    if env_timeout:
        try:
            values["timeout_s"] = float(env_timeout)
        except ValueError:
            raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds; allowed: "
                              f"{NUMBER_LIMITS['timeout_s'][1]}, got {env_timeout!r}") from None
        _check_number("timeout_s", values["timeout_s"], f"{TIMEOUT_ENV} (setting timeout_s): ")
    settings = Settings(**values)
    if not settings.api_base.startswith(("http://", "https://")):
        raise ConfigError(f"api_base must be an http(s) URL, got {settings.api_base!r}")
    return Settings(**{**settings.__dict__, "api_base": settings.api_base.rstrip("/")})


TIMEOUT_ENV = "HUNYUANCUSTOM_TIMEOUT"
# The least each numeric setting may be, and how a message says what is allowed. Every one must
# also be finite: NaN compares false with everything, so a NaN deadline would never pass, and
# an infinite one is none at all.
NUMBER_LIMITS = {
    "timeout_s": (0.0, "a finite number of seconds above 0"),
    "max_download_bytes": (1, "a whole number of bytes, 1 or more"),
    "upload_max_age_s": (0.0, "a finite number of seconds, 0 or more"),
    "concurrency": (1, "a whole number, 1 or more"),
    "max_decoded_bytes": (1, "a whole number of bytes, 1 or more"),
}


def _check_number(name: str, value, where: str) -> None:
    """Refuse a numeric setting that is not finite or is below its least value."""
    if name not in NUMBER_LIMITS:
        return
    least, allowed = NUMBER_LIMITS[name]
    finite = isinstance(value, int) or math.isfinite(value)
    ok = finite and (value > least if name == "timeout_s" else value >= least)
    if not ok:
        raise ConfigError(f"{where}{name} must be {allowed}, got {value!r}")


def key_routes_enabled() -> bool:
    """Whether the key may be set, read or deleted through ComfyUI's server (Settings dialog).
    Turned off with HUNYUANCUSTOM_KEY_ROUTES=off, for machines where loopback is not only the
    owner: other user accounts, a reverse proxy on the same host."""
    return os.environ.get(KEY_ROUTES_ENV, "").strip().lower() not in ("0", "off", "false", "no")
