"""Whether a server answers: one HTTP probe for the tracking server, the stack's servers and the
checks before a run."""

from __future__ import annotations

import urllib.error
import urllib.request


def health_problem(url: str, timeout_s: float = 5.0) -> str | None:
    """None when `url` answers HTTP 200 within `timeout_s`; else what went wrong, in a few words."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http(s) URLs only)
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))
