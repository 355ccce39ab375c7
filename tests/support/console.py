"""Signing in to the console over plain HTTP (no browser), for the console's route tests."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx

__all__ = ["csrf_of", "login_csrf", "signed_in"]


def login_csrf(client: httpx.Client) -> str:
    """Open the sign-in page (which sets the pre-session CSRF cookie); its form token."""
    page = client.get("/ui/login")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


@contextlib.contextmanager
def signed_in(base_url: str, token: str) -> Iterator[httpx.Client]:
    """An HTTP client holding a console session opened with ``token``."""
    with httpx.Client(base_url=base_url, timeout=15.0) as client:
        answer = client.post(
            "/ui/login", data={"token": token, "csrf": login_csrf(client), "next": "/ui/"}
        )
        assert answer.status_code == 303, answer.text
        assert client.cookies.get("aether_session"), "no session cookie set"
        yield client


def csrf_of(client: httpx.Client, path: str = "/ui/") -> str:
    """The session's CSRF token, read from a page's meta tag."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)
