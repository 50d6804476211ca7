"""Channel names: built from the template, case preserved, hostile user ids refused (4003)."""

from __future__ import annotations

import time

import jwt
import pytest

from relay.channels import InvalidChannel, channels_for, table_of
from relay.config import DEFAULT_CHANNEL_TEMPLATES
from tests.support import SECRET, RelayProcess, notify

HOSTILE = [
    'x"; LISTEN "user_Subscription_1',
    "a b",
    "tab\tid",
    "nul\x00id",
    "line\nbreak",
    "quote'id",
    "ünïcode",
    "аdmin",  # Cyrillic а, a look-alike
    "x" * 46,  # user_Subscription_ (18) + 46 = 64 bytes: one over the limit
    "*",
    "../etc",
]


def test_channels_keep_the_case_of_the_user_id() -> None:
    assert channels_for("AbC", DEFAULT_CHANNEL_TEMPLATES) == (
        "user_Subscription_AbC", "user_Usage_AbC")


def test_longest_valid_user_id_makes_a_63_byte_channel() -> None:
    (sub, usage) = channels_for("x" * 45, DEFAULT_CHANNEL_TEMPLATES)
    assert len(sub) == 63


@pytest.mark.parametrize("user_id", HOSTILE)
def test_hostile_user_ids_cannot_form_channels(user_id: str) -> None:
    with pytest.raises(InvalidChannel):
        channels_for(user_id, DEFAULT_CHANNEL_TEMPLATES)


def test_table_of_channel() -> None:
    assert table_of("user_Subscription_42") == "subscription"
    assert table_of("user_Usage_a_b") == "usage"


@pytest.mark.slow
@pytest.mark.parametrize("user_id", HOSTILE)
def test_hostile_user_id_is_closed_with_4003_and_others_keep_receiving(
        relay: RelayProcess, postgres_url: str, user_id: str) -> None:
    bystander = relay.connect("bystander")
    now = int(time.time())
    token = jwt.encode({"userId": user_id, "iss": "papr-app", "aud": "papr-realtime",
                        "exp": now + 60}, SECRET.encode(), algorithm="HS256")
    hostile = relay.connect(token=token, expect_connected=False)
    assert hostile.expect_close()[0] == 4003
    notify(postgres_url, "user_Usage_bystander", '{"still": "served"}')
    assert bystander.expect("update")["data"] == {"still": "served"}
    bystander.close()
    _, health = relay.health()
    assert health["listener"]["database"] == "connected"
