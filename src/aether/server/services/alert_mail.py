"""Alert emails: one message per notification (firing, resolved), sent through the
SMTP server the settings name (``alert_smtp_*``).

``compose`` is pure (the message); ``send`` talks SMTP with the standard library's
``smtplib``, blocking, so the leader runs it in a thread. The password goes to the
server's ``AUTH`` only: it is never logged, and an error's text is the server's answer.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from aether.core.alerts import AlertState
from aether.server.settings import ServerSettings

__all__ = ["MailConfig", "MailError", "compose", "mail_config", "send"]

TIMEOUT = 10.0  # seconds per SMTP connection


class MailError(Exception):
    """An email was not accepted; the text says what the SMTP server (or network) said."""


@dataclass(frozen=True)
class MailConfig:
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = False
    username: str = ""
    password: str = ""

    def __repr__(self) -> str:  # the password stays out of every log line and traceback
        return (
            f"MailConfig(host={self.host!r}, port={self.port}, sender={self.sender!r}, "
            f"to={self.to!r}, starttls={self.starttls}, username={self.username!r})"
        )


def mail_config(settings: ServerSettings) -> MailConfig | None:
    """The SMTP settings, or None when alert email is not configured."""
    if not settings.alert_smtp_host:
        return None
    return MailConfig(
        host=settings.alert_smtp_host,
        port=settings.alert_smtp_port,
        sender=settings.alert_smtp_from,
        to=tuple(settings.alert_smtp_to),
        starttls=settings.alert_smtp_starttls,
        username=settings.alert_smtp_username,
        password=settings.alert_smtp_password,
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _labels(alert: AlertState) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(alert.labels.items())) or "cluster"


def compose(config: MailConfig, alert: AlertState, now: float) -> EmailMessage:
    """The email for one notification of ``alert`` (its state is firing or resolved)."""
    message = EmailMessage()
    state = alert.state.upper()
    message["Subject"] = f"[aether] {state} {alert.rule} {_labels(alert)}"
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Date"] = formatdate(now)
    message["Message-ID"] = make_msgid("alert")
    lines = [
        f"Alert {alert.rule} is {alert.state}.",
        "",
        f"rule:      {alert.rule}",
        f"state:     {alert.state}",
        f"severity:  {alert.severity}",
        f"labels:    {_labels(alert)}",
        f"tenant:    {alert.tenant or '(cluster)'}",
        f"value:     {alert.value:g}",
        f"since:     {_when(alert.started_at)}",
        f"fired:     {_when(alert.fired_at)}",
        f"resolved:  {_when(alert.resolved_at)}",
        f"alert id:  {alert.fingerprint}",
        "",
        "See `aether alerts ls` or the console's Alerts page; the runbooks are in",
        "docs/operations.md (Alerts and runbooks).",
    ]
    message.set_content("\n".join(lines) + "\n")
    return message


def send(config: MailConfig, message: EmailMessage) -> list[str]:
    """Hand ``message`` to the SMTP server (blocking); the recipients it refused (some
    only: the others have it, so it is not sent again). MailError when not accepted."""
    try:
        with smtplib.SMTP(config.host, config.port, timeout=TIMEOUT) as smtp:
            if config.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if config.username:
                smtp.login(config.username, config.password)
            refused = smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        said = exc.smtp_error
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise MailError(f"SMTP {exc.smtp_code}: {text}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailError(f"every recipient refused: {', '.join(sorted(exc.recipients))}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"{type(exc).__name__}: {exc}") from None
    return sorted(refused)
