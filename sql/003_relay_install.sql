-- relay's database side, part 3 of 3: settings, version, grants, and the announcement.

-- Defaults; an operator's value is kept (only the description is refreshed).
-- `python -m relay db install` then applies RELAY_NOTIFY_CHANNEL when it is set.
INSERT INTO relay.settings (name, value, description) VALUES
    ('notify_channel', 'relay',
     'The one NOTIFY channel relay_publish uses and relay''s listeners LISTEN to (RELAY_NOTIFY_CHANNEL).'),
    ('legacy_notify', 'off',
     'Also NOTIFY each message on its own channel, as relay did before version 1, for relays that still LISTEN per user (rolling deploys and roll-backs; a relay in RELAY_USER_CHANNELS=listen mode would hear both).')
ON CONFLICT (name) DO UPDATE SET description = excluded.description;

-- Upgrading from before version 1 (see 001): the running relays LISTEN per user.
UPDATE relay.settings SET value = 'on'
WHERE name = 'legacy_notify' AND current_setting('relay.upgrade_from_v0', true) = 'true';

INSERT INTO relay.meta DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;

SELECT relay._compile();

-- Only the owner (the installing role, which relay's listener should connect as) uses schema
-- relay; apps get the two entry points.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA relay FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.relay_publish(text, json) TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.relay_notify() TO PUBLIC;

UPDATE relay.meta SET version = 1, upgraded_at = now() WHERE version < 1;

-- Tell running listeners: RELAY_USER_CHANNELS=auto switches to the shared channel on this.
SELECT pg_catalog.pg_notify(relay._cfg_channel(), 'r1 i 0 0 00000000 0  1');
