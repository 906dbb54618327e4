"""A tap on the push itself (issue 16): the gateway pushes a firing alert through apprise to a
local ntfy-protocol server and to aiosmtpd; the test reads the action or the link from what
was delivered and does what the ntfy app or a mail client does with it, against the same
gateway's ack endpoint. Then the retained alert says acknowledged by the route's person (or
the name typed on the page), the point is stored, and nothing escalates at +60 s.

Each half alone is tested elsewhere (test_push_ack.py: what pushes carry; test_ack_endpoint.py:
what the endpoint does with a link); this is the two joined, as staff meet them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from alerts.push import PushDispatcher
from tests.integration.test_ack_endpoint import (
    FORM,
    ShiftedClock,
    raise_alert,
    retained,
    settings_with_ack,
    watch,
)
from tests.support.alert_flow import arm_team, published
from tests.support.harness import MqttProbe, influx_v1, running_gateway, wait_for
from tests.support.push_services import NtfyServer, ntfy_server
from tests.support.receivers import MailBox, smtp_server
from tests.support.servers import InfluxDB1Server, MosquittoServer

PHYSIO = "Sam (physio)"  # the ntfy route's person: a tap acknowledges as Sam
LINK = re.compile(r"Acknowledge: (http://\S+/ack/\S+)")


@pytest.fixture
async def ntfy() -> AsyncIterator[NtfyServer]:
    async with ntfy_server() as server:
        yield server


@pytest.fixture
async def mailbox() -> AsyncIterator[MailBox]:
    async with smtp_server("cuffwatch", "smtpSecret77") as box:
        yield box


async def test_a_tap_on_the_delivered_push_acknowledges(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, ntfy: NtfyServer, mailbox: MailBox,
) -> None:
    routes = [
        {"url": ntfy.url("t1-staff"), "min_severity": "critical", "person": PHYSIO},
        {"url": mailbox.url(), "min_severity": "critical"},  # no person: the page asks
    ]
    team = arm_team("c1", "c2", routes=routes, name="First team",
                    athletes={"a-1": {"name": "Jo Example"}, "a-2": {}})
    settings = settings_with_ack(mosquitto, topic_root, tmp_path,
                                 influx=influx_v1(influxdb, influx_db), teams={"t1": team},
                                 alerts={"escalate_after_s": 60, "ack_silence_s": 60})
    clock = ShiftedClock()
    c1 = f"{topic_root}/t1/alerts/c1/over_pressure"
    c2 = f"{topic_root}/t1/alerts/c2/over_pressure"
    push = PushDispatcher.from_settings(settings)
    async with running_gateway(settings, clock=clock, notifiers=[push]), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe, \
            aiohttp.ClientSession() as phone:
        await watch(probe, topic_root)

        # c1: the ntfy app's button, an http action: a POST to the link, no page
        await raise_alert(dev, probe, topic_root, "c1")
        await wait_for(lambda: len(ntfy.messages) >= 1, what="the ntfy push")
        [button] = ntfy.messages[0].actions
        assert (button["action"], button["method"]) == ("http", "POST")
        tapped = time.monotonic()
        async with phone.post(button["url"], data=b"") as done:
            assert done.status == 200
        await wait_for(lambda: _states(probe, c1)[-1:] == ["acknowledged"], what="c1 acked")
        assert time.monotonic() - tapped < 1.0  # the bound, on local parts
        assert (await retained(mosquitto, c1))["acknowledged_by"] == PHYSIO

        # c2: the mail's link: GET the page (a scanner's fetch acknowledges nothing), then
        # POST its form with the name the page asks for
        await raise_alert(dev, probe, topic_root, "c2")
        await wait_for(lambda: len(_mailed_links(mailbox)) >= 2, what="both mails")
        url = _mailed_links(mailbox)[-1]
        async with phone.get(url) as page:
            assert page.status == 200
            html = await page.text()
        assert "Jo Example" not in html  # c2 is a-2's cuff
        assert 'name="by"' in html  # no person on the route: the page asks who
        await asyncio.sleep(0.3)
        assert _states(probe, c2) == ["firing"]  # opening the page changed nothing
        async with phone.post(url, data={"by": "Alex"}, headers=FORM) as done:
            assert done.status == 200
        await wait_for(lambda: _states(probe, c2)[-1:] == ["acknowledged"], what="c2 acked")
        assert (await retained(mosquitto, c2))["acknowledged_by"] == "Alex"

        rows = await wait_for(lambda: _acked_points(influxdb, influx_db), what="stored acks")
        assert sorted((r["cuff"], r["acknowledged_by"]) for r in rows) == [
            ("c1", PHYSIO), ("c2", "Alex")]

        clock.offset = 61.0  # escalate_after_s has passed: neither escalates
        await asyncio.sleep(1.0)  # several timer ticks
        for topic in (c1, c2):
            assert not any(a and a["escalated"] for a, _ in published(probe, topic))


def _states(probe: MqttProbe, topic: str) -> list[str]:
    return [a["state"] for a, _ in published(probe, topic) if a]


def _mailed_links(mailbox: MailBox) -> list[str]:
    return [m.group(1) for _, body in mailbox.texts() if (m := LINK.search(body))]


async def _acked_points(influxdb: InfluxDB1Server, db: str) -> list[dict[str, Any]] | None:
    rows = await asyncio.to_thread(
        influxdb.query, db, "SELECT * FROM \"alert\" WHERE \"state\" = 'acknowledged' GROUP BY *")
    return rows if len(rows) >= 2 else None
