"""Is the MLflow tracking store reachable? Checked before any work, so a dead server costs seconds, not a run.

`check_tracking` is what the CLI calls right after validating params, and what `tracking.setup` (every stage
run, the Prefect flow's parent run, `genlab compare`) calls first. It imports no MLflow (3 s on 2 cores) so
the CLI can fail within a few seconds.

- http(s) URI: one GET `<uri>/health`, 3 s timeout, no retry. Any HTTP answer (even 404 or 401) counts
  as reachable; a refused connection, a timeout or an unknown host stops the run with one line naming
  the URI.
- sqlite or file URI: the store's directory must exist or be creatable, and be writable.

It also bounds MLflow's own HTTP client for the rest of the process and the processes it starts (set only
where the environment does not already set them, so a user can override each one):

    MLFLOW_HTTP_REQUEST_MAX_RETRIES=2       MLflow's default: 7
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1    MLflow's default: 2 (seconds, doubled per retry)
    MLFLOW_HTTP_REQUEST_TIMEOUT=20          MLflow's default: 120 (seconds per request)

With MLflow's defaults a server that stops answering mid-run hangs each call for many minutes; with
these a call fails after at most 3 x 20 s plus a few seconds of backoff.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests

from genlab.errors import GenlabError

PREFLIGHT_TIMEOUT_S = 3.0
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def uri_scheme(uri: str) -> str:
    """A tracking URI's scheme in lower case ("" for a plain path)."""
    return uri.split(":", 1)[0].lower() if ":" in uri else ""


def check_tracking(root: Path) -> str:
    """Fail fast, with one line naming the URI, when the tracking store cannot be reached; return the URI.

    Also bounds MLflow's HTTP retries and timeout for this process and its children (`HTTP_DEFAULTS`)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(root)
    scheme = uri_scheme(uri)
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in ("sqlite", "file", ""):
        _check_store_dir(uri, _store_dir(uri, scheme))
    return uri


def _check_server(uri: str) -> None:
    reason = unreachable(uri, PREFLIGHT_TIMEOUT_S)
    if reason is not None:
        raise GenlabError(f"MLflow tracking server {uri} is unreachable ({reason}): start it or set "
                          "MLFLOW_TRACKING_URI")


def unreachable(base_url: str, timeout: float) -> str | None:
    """Why the server at `base_url` does not answer one GET `<base_url>/health` (no retry), or None when it
    answers at all: any HTTP status, or TLS, counts (auth and certificates are the client's business). Used for
    the MLflow tracking server and the Prefect API alike."""
    try:
        requests.get(f"{base_url.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.SSLError:
        return None  # it answered, in TLS: reachable
    except requests.exceptions.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.exceptions.RequestException as exc:
        return _root_reason(exc)
    return None


def _root_reason(exc: BaseException) -> str:
    """The OS-level reason under a requests error (e.g. 'Connection refused'), else its type."""
    seen: BaseException | None = exc
    for _ in range(10):  # requests -> urllib3 MaxRetryError.reason -> NewConnectionError -> OSError
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        inner = getattr(seen, "reason", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__ or seen.__context__ or (
            seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None)
    return type(exc).__name__


def _store_dir(uri: str, scheme: str) -> Path | None:
    """The directory a local store lives in: a sqlite file's folder, or the file store itself."""
    if scheme == "sqlite":  # sqlite:///relative.db, sqlite:////absolute.db, sqlite:// (in memory)
        path = urlparse(uri).path.removeprefix("/")
        return None if path in ("", ":memory:") else Path(path).parent
    return Path(url2pathname(urlparse(uri).path)) if scheme == "file" else Path(uri)


def _check_store_dir(uri: str, where: Path | None) -> None:
    if where is None:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GenlabError(f"MLflow tracking store {uri}: cannot create {where} ({exc.strerror}): "
                          "fix the path or set MLFLOW_TRACKING_URI") from None
    if not os.access(where, os.W_OK):
        raise GenlabError(f"MLflow tracking store {uri}: {where} is not writable: "
                          "fix its permissions or set MLFLOW_TRACKING_URI")
