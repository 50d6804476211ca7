"""No two users share a channel (issue 14, item 3).

User ids may hold ``_``, the separator of channel names, so ``RELAY_CHANNELS`` templates and
the row trigger's table parts could make one name mean two users. The rule
(relay/channels.py) is checked exactly; these tests hold it against random templates and
ids (hypothesis), against the two reported attacks, and against a real PostgreSQL trigger.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relay.channels import (
    TABLE_PART,
    TemplateError,
    channels_for,
    check_table_part,
    check_templates,
    find_collision,
    trigger_owner_of,
    trigger_template,
    user_of,
)
from relay.config import DEFAULT_CHANNEL_TEMPLATES, ConfigError, Settings
from relay.triggers import TriggerError, TriggerSpec
from tests.support import ROOT, SECRET, NotifyListener

BASE = {"DATABASE_URL": "postgresql://u@db.example.com/app", "WEBSOCKET_JWT_SECRET": SECRET}

# Pieces that make collisions likely: the separator, the default templates' words, letters
# and digits, and characters outside the id alphabet.
PIECES = ["user", "_", "Sub", "Usage", "a", "1", ".", "-", "/", "#", "x_", "é", " "]
fixed_text = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
templates = st.builds(lambda a, b: f"{a}{{userId}}{b}", fixed_text, fixed_text)
template_sets = st.lists(templates, min_size=1, max_size=3, unique=True)
ids = st.lists(st.sampled_from(["_", "1", "a", "Usage", "Sub", "user", "x_", ".", "Z"]),
               min_size=1, max_size=5).map("".join)


def _name(template: str, user: str) -> str:
    return template.replace("{userId}", user)


def _owners(name: str, configured: list[str]) -> set[tuple[str, str]]:
    """Every (template, user) and (trigger table part, owner) that yields ``name``."""
    owners = {(t, u) for t in configured if (u := user_of(t, name)) is not None}
    trigger = trigger_owner_of(name)
    if trigger is not None:
        owners.add((trigger_template(trigger[0]), trigger[1]))
    return owners


@pytest.mark.slow  # hundreds of examples: the long fuzz, not the quick loop
@settings(max_examples=400, deadline=None)
@given(template_sets, st.lists(ids, min_size=1, max_size=4))
def test_accepted_templates_give_every_name_one_owner(configured: list[str],
                                                      users: list[str]) -> None:
    try:
        check_templates(configured)
    except TemplateError:
        assume(False)
    for template in configured:
        for user in users:
            name = _name(template, user)
            if len(name) <= 63:
                # Read back by every template and by the trigger's grammar: only its owner.
                assert _owners(name, configured) == {(template, user)}, name


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(template_sets)
def test_every_refusal_shows_a_real_shared_name(configured: list[str]) -> None:
    assume(all(len(t.encode()) - len("{userId}") < 63 for t in configured))
    collision = find_collision(configured)
    if collision is None:
        check_templates(configured)  # accepted: nothing to show
        return
    with pytest.raises(TemplateError) as refused:
        check_templates(configured)
    assert collision.name in str(refused.value)
    assert len(collision.name.encode()) <= 63
    owners = _owners(collision.name, configured)
    assert len(owners) >= 2, (collision, owners)  # two different owners, both real ids
    for template, user in owners:
        assert channels_for(user, (template,)) == (collision.name,)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True), ids)
def test_every_table_part_the_rule_admits_reads_back_to_its_owner(table: str,
                                                                  owner: str) -> None:
    check_table_part(table, DEFAULT_CHANNEL_TEMPLATES)
    name = _name(trigger_template(table), owner)
    assert _owners(name, list(DEFAULT_CHANNEL_TEMPLATES)) <= {(trigger_template(table), owner)}
    assert trigger_owner_of(name) == (table, owner)


# ----- the reported attacks -----

def test_a_template_that_extends_another_is_refused_with_an_example() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**BASE, "RELAY_CHANNELS": "user_Sub_{userId},user_Sub_{userId}_Usage"})
    line = str(refused.value)
    assert line.startswith("RELAY_CHANNELS: user_Sub_{userId} and user_Sub_{userId}_Usage "
                           "can name the same channel: user_Sub_0_Usage is user '0_Usage'")
    assert "\n" not in line


@pytest.mark.parametrize("template", ["user_{userId}", "{userId}", "user_Sub_{userId}_x",
                                      "user_Sub_x{userId}", "user_Sub{userId}"])
def test_a_template_that_reads_as_a_trigger_channel_is_refused(template: str) -> None:
    with pytest.raises(TemplateError, match="can name a channel of relay's row trigger"):
        check_templates([template])


@pytest.mark.parametrize("configured", [
    DEFAULT_CHANNEL_TEMPLATES,
    ("user_Subscription_{userId}", "user_Usage_{userId}", "user_Invoice2_{userId}"),
    ("org_{userId}", "feed_{userId}"),
    ("rt/{userId}", "rt/{userId}/x"),  # "/" is not in any user id
    ("user_Sub.x_{userId}",),
])
def test_templates_that_cannot_collide_are_accepted(configured: tuple[str, ...]) -> None:
    check_templates(configured)


def test_ids_with_underscores_keep_working() -> None:
    assert channels_for("user_2NNEqLxYz", DEFAULT_CHANNEL_TEMPLATES) == (
        "user_Subscription_user_2NNEqLxYz", "user_Usage_user_2NNEqLxYz")


@pytest.mark.parametrize("part", ["Subscription_Invoice", "_x", "1x", "Sub-x", ""])
def test_a_table_part_that_could_collide_is_refused_when_attached(part: str) -> None:
    with pytest.raises(TriggerError) as refused:
        TriggerSpec.parse("invoice", part, templates=DEFAULT_CHANNEL_TEMPLATES)
    assert str(refused.value).startswith(f"--channel {part!r}: letters and digits only")
    assert TABLE_PART.fullmatch(part) is None


def test_relay_db_trigger_refuses_it_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "db", "trigger", "invoice", "--channel",
         "Subscription_Invoice", "--print"], cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "letters and digits only" in lines[0], lines


# ----- the SQL function, when it fires -----

@pytest.fixture
def connections(postgres_url: str, schema_installed: list[str]) -> Iterator[tuple[Any, Any]]:
    listen, write = psycopg2.connect(postgres_url), psycopg2.connect(postgres_url)
    listen.autocommit = True
    try:
        yield listen, write
    finally:
        listen.close()
        write.close()


@pytest.mark.slow
def test_the_trigger_refuses_a_table_part_with_an_underscore_when_it_fires(
        connections: tuple[Any, Any]) -> None:
    listen, write = connections
    listener = NotifyListener(listen)
    # User "Invoice_42" listens to user_Subscription_Invoice_42 (the default templates).
    listener.listen("user_Subscription_Invoice_42")
    with write, write.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS sec_invoice (id serial PRIMARY KEY, "
                       "user_id text NOT NULL, amount int)")
        # Written by hand, as a migration could: relay db trigger would refuse the part.
        cursor.execute("CREATE OR REPLACE TRIGGER relay_notify AFTER INSERT ON sec_invoice "
                       "FOR EACH ROW EXECUTE FUNCTION relay_notify('Subscription_Invoice')")
    write.notices.clear()
    with write, write.cursor() as cursor:
        cursor.execute("INSERT INTO sec_invoice (user_id, amount) VALUES ('42', 100)")
    assert listener.collect() == []  # user 42's row never reached Invoice_42's channel
    assert any("channel table part 'Subscription_Invoice' is not letters and digits" in n
               for n in write.notices), write.notices
    with write, write.cursor() as cursor:
        cursor.execute("DROP TABLE sec_invoice")
