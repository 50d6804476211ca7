-- relay's database side, part 3 of 3: the commit triggers, settings, identity, version,
-- grants, and the announcement.

-- The deferred constraint triggers that number a transaction's messages at COMMIT. Created once
-- (CREATE TRIGGER takes a SHARE ROW EXCLUSIVE lock; a re-install must take none). ENABLE
-- ALWAYS: they fire under session_replication_role = replica too (pg_restore
-- --disable-triggers, logical replication's apply), where relay_publish may still be called.
-- WHEN (NEW.arm): only the transaction's first row queues an event, so it fires once.
DO $triggers$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'relay.staged'::regclass AND tgname = 'relay_commit') THEN
        CREATE CONSTRAINT TRIGGER relay_commit AFTER INSERT ON relay.staged
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.arm) EXECUTE FUNCTION relay._on_commit();
        ALTER TABLE relay.staged ENABLE ALWAYS TRIGGER relay_commit;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'relay.unsettled'::regclass AND tgname = 'relay_commit') THEN
        CREATE CONSTRAINT TRIGGER relay_commit AFTER INSERT ON relay.unsettled
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW WHEN (NEW.arm) EXECUTE FUNCTION relay._on_commit();
        ALTER TABLE relay.unsettled ENABLE ALWAYS TRIGGER relay_commit;
    END IF;
END
$triggers$;

-- Defaults; an operator's value is kept (only the description is refreshed).
-- `python -m relay db install` then applies RELAY_NOTIFY_CHANNEL when it is set.
INSERT INTO relay.settings (name, value, description) VALUES
    ('outbox', 'on',
     'Keep every message in relay.outbox, numbered in commit order (the durable history: clients resume on any instance, gaps are filled). off: relay_publish only NOTIFYs and listeners number messages in memory, as version 1 did.'),
    ('retention', '15 minutes',
     'How long a message stays in relay.outbox: how long a client may be away (a deploy, a restart, a network switch) and still resume without a resync.'),
    ('dormant_after', '1 hour',
     'With no relay listener alive for this long, writers stop keeping messages (the outbox never grows for ever) and the next relay starts a new epoch. At least retention.'),
    ('commit_lock_wait', '5 seconds',
     'The longest a COMMIT waits for relay''s commit lock (normally microseconds); past it the transaction''s messages go out unnumbered and listeners resync those channels. 0: no bound of relay''s own (the app''s lock_timeout still applies).'),
    ('notify_per_message_max', '100',
     'A transaction with more messages than this sends one sync NOTIFY instead of one per message; listeners read the rows.'),
    ('notify_channel', 'relay',
     'The one NOTIFY channel relay_publish uses and relay''s listeners LISTEN to (RELAY_NOTIFY_CHANNEL).'),
    ('legacy_notify', 'off',
     'Also NOTIFY each message on its own channel, as relay did before version 1, for relays that still LISTEN per user (rolling deploys and roll-backs; a relay in RELAY_USER_CHANNELS=listen mode would hear both).')
ON CONFLICT (name) DO UPDATE SET description = excluded.description;

-- Upgrading from before version 1 (see 001): the running relays LISTEN per user.
UPDATE relay.settings SET value = 'on'
WHERE name = 'legacy_notify' AND current_setting('relay.upgrade_from', true) = '0';

INSERT INTO relay.meta DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;

-- The history's identity: made once (on a fresh install, or the upgrade from version 1), never
-- replaced by a re-install.
UPDATE relay.meta m
SET epoch = relay._new_epoch_id(), epoch_started_at = now(), epoch_reason = 'installed',
    system_identifier = f.system_identifier, timeline = f.timeline,
    database_oid = f.database_oid, neon_timeline = f.neon_timeline
FROM relay._fingerprint() f
WHERE m.epoch IS NULL;

-- A fresh install counts as a sign of life: writers are not dormant before the first relay.
SELECT setval('relay.heartbeat', extract(epoch FROM clock_timestamp())::bigint)
WHERE NOT EXISTS (SELECT 1 FROM relay.heartbeat WHERE is_called);

-- Relay listeners connected now that have not said hello(2) are taken for version 1's (main's
-- listener before the durable history, which sets this application_name): the outbox is held
-- off until they are gone (relay._review_hold). A listener of this version that has not said
-- hello yet releases it with its hello(2), on this install's announcement. On a fresh install
-- or an upgrade from version 1 the outbox stays held until the first hello(2) anyway
-- (relay.meta.durable_since): with main's listener alone, writers behave as version 1's.
INSERT INTO relay.listeners (pid, backend_start, speaks, hello_at)
SELECT a.pid, a.backend_start, 1, now() FROM pg_catalog.pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name = 'relay-listener'
  AND a.pid <> pg_backend_pid()
ON CONFLICT (pid) DO UPDATE SET backend_start = excluded.backend_start, speaks = 1,
                                hello_at = excluded.hello_at
    WHERE relay.listeners.backend_start IS DISTINCT FROM excluded.backend_start;
-- A fresh install, or the upgrade from version 1: held from the start (no writer of this
-- version has staged anything yet, so there is nothing to wait for nor to announce).
UPDATE relay.meta SET outbox_held = relay._hold_reason()
WHERE outbox_held IS NULL AND durable_since IS NULL;
SELECT relay._compile();
SELECT relay._review_hold();

-- Only the owner (the installing role, which relay's listener should connect as) uses schema
-- relay; apps get the two entry points.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA relay FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.relay_publish(text, json) TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.relay_notify() TO PUBLIC;

UPDATE relay.meta SET version = 3, upgraded_at = now() WHERE version < 3;

-- Tell running listeners: RELAY_USER_CHANNELS=auto switches to the shared channel on this, and
-- every listener reads relay.hello() again.
SELECT pg_catalog.pg_notify(relay._cfg_channel(), 'r1 i 0 0 00000000 0  3');
