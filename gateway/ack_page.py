"""The ack endpoint's pages: one small HTML document each, no script, nothing fetched.

A phone opens a push's link and sees what the push said (the athlete's and team's names,
the value against its limit, what to do, since when in the team's local time: the push's own
words, `alerts.render`), the alert's state, and one button, a form POSTing to the page's own
address. Every text from the configuration or an alert is escaped. The one stylesheet is
inline and allowed by its hash, so the Content-Security-Policy can forbid everything else.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Final

from alerts.model import Alert, AlertState, Change, Transition
from alerts.render import Directory, duration, local_time, render
from core.config import Settings

__all__ = ["CSP", "AckPages"]

_STYLE: Final = (
    "body{font:17px/1.45 system-ui,sans-serif;margin:0;background:#f4f4f4;color:#111}"
    "main{max-width:34em;margin:0 auto;padding:1.2em}"
    "h1{font-size:1.3em;margin:.2em 0 .6em}"
    ".state{font-weight:600}.note{color:#555;font-size:.9em}"
    "label{display:block;margin:.8em 0 .3em}"
    "input{font:inherit;width:100%;box-sizing:border-box;padding:.5em}"
    "button{font:inherit;font-weight:600;width:100%;margin-top:1em;padding:.8em;"
    "border:0;border-radius:.4em;background:#b00020;color:#fff}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
# Nothing may load, run or be framed; the form may post only back to this page.
CSP: Final = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _document(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        "<meta name=\"robots\" content=\"noindex, nofollow\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><main>\n{body}</main></body></html>\n"
    ).encode()


def _p(text: str, cls: str = "") -> str:
    attr = f" class=\"{cls}\"" if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>\n"


class AckPages:
    """The pages, in the configuration's names and the teams' time zones."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._directory = Directory.from_settings(settings)

    def alert(self, alert: Alert, *, person: str, problem: str = "") -> bytes:
        """The alert as its push says it, its state, and the button (with a name field when
        the link names nobody). `problem`: why the last POST did nothing (a missing name)."""
        push = render(Transition(alert, Change.RAISED, True), self._directory)
        lines = push.body.splitlines()
        body = [f"<h1>{html.escape(push.title)}</h1>\n", *(_p(line) for line in lines)]
        body.append(_p(self._state(alert), "state"))
        if problem:
            body.append(_p(problem, "state"))
        body.append("<form method=\"post\">\n")
        if person:
            button = f"Acknowledge as {person}"
        else:
            body.append("<label for=\"by\">Your name</label>"
                        "<input id=\"by\" name=\"by\" maxlength=\"64\" required "
                        "autocomplete=\"name\">\n")
            button = "Acknowledge"
        body.append(f"<button type=\"submit\">{html.escape(button)}</button>\n</form>\n")
        silence = self._silence(alert.team)
        body.append(_p(f"Acknowledging tells the team you are on it and silences pushes about "
                       f"this alert for {silence}; if it still holds then, it fires again.",
                       "note"))
        return _document(push.title, "".join(body))

    def done(self, alert: Alert) -> bytes:
        """What a POST that acknowledged answers."""
        zone = self._directory.zone(alert.team)
        at = local_time(alert.updated_at_ms, zone)
        who = alert.acknowledged_by or "you"
        title = f"Acknowledged by {who} at {at}"
        body = [f"<h1>{html.escape(title)}</h1>\n",
                _p(render(Transition(alert, Change.RAISED, True), self._directory).title),
                _p(f"Pushes about it are silenced for {self._silence(alert.team)}; if it "
                   "still holds then, it fires again.", "note")]
        return _document(title, "".join(body))

    def gone(self) -> bytes:
        """For a link whose alert is no longer the open one (resolved, or a newer alert)."""
        title = "This alert is no longer open"
        return _document(title, f"<h1>{title}</h1>\n" + _p(
            "It has resolved, or a newer alert has taken its place (its own push has its "
            "own link). Nothing was acknowledged."))

    def _state(self, alert: Alert) -> str:
        if alert.state is AlertState.ACKNOWLEDGED:
            at = local_time(alert.updated_at_ms, self._directory.zone(alert.team))
            by = f" by {alert.acknowledged_by}" if alert.acknowledged_by else ""
            return f"Already acknowledged{by} at {at}."
        if alert.escalated:
            return "Not acknowledged: escalated."
        return "Not acknowledged yet."

    def _silence(self, team: str) -> str:
        try:
            seconds = self._settings.team_alerts(team).ack_silence_s
        except KeyError:
            seconds = self._settings.alerts.ack_silence_s
        return duration(seconds)
