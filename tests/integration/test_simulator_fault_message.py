"""``fault_message``: a JSON fault that says what the scenario wants (hostile text)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from watcher.errors import ScenarioError
from watcher.simulator import Scenario

pytestmark = pytest.mark.integration

API = "/SKLM/rest/v1"
PASSWORD = "sim-Pa55word"
HOSTILE = "<script>alert(1)</script>"


def test_fault_message_must_be_a_non_empty_string() -> None:
    """A bad ``fault_message`` is named; a good one lands in the spec."""
    with pytest.raises(ScenarioError) as caught:
        Scenario.from_dict(
            {"servers": [{"name": "a", "fault_message": ""}, {"name": "b"}]}
        )
    assert caught.value.problems == [
        ("servers[0].fault_message", "expected a non-empty string")
    ]
    scenario = Scenario.from_dict(
        {"defaults": {"fault_message": HOSTILE}, "servers": [{"name": "a"}]}
    )
    assert scenario.servers[0].fault_message == HOSTILE
    assert (
        Scenario.from_dict({"servers": [{"name": "a"}]}).servers[0].fault_message
        is None
    )


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("json_500", 500, "CTGKM0999E"), ("json_404", 404, "CTGKM0998E")],
)
async def test_json_faults_carry_the_message(simulator, fault, status, code) -> None:
    """Every JSON fault's ``message`` is the CTGKM id, then ``fault_message`` verbatim."""
    sim = await simulator(
        {
            "servers": [
                {
                    "name": "s",
                    "password": PASSWORD,
                    "error_rate": 1.0,
                    "faults": [fault],
                    "fault_message": HOSTILE,
                }
            ]
        }
    )
    base = sim.urls["s"]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}{API}/ckms/login",
            json={"userid": "SKLMAdmin", "password": PASSWORD},
        ) as response:
            session_id = (await response.json())["UserAuthId"]
        async with http.get(
            f"{base}{API}/ckms/restore/progress",
            headers={"Authorization": f"SKLMAuth userAuthId={session_id}"},
        ) as response:
            assert response.status == status
            body = json.loads(await response.text())
    assert body == {"code": code, "message": f"{code} {HOSTILE}"}
