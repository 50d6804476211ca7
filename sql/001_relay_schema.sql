-- relay's database side, part 1 of 3: the version guard, schema relay, its tables.
--
-- relay SQL version 1: one shared NOTIFY channel (wire protocol r1, docs/architecture.md
-- "The shared channel"). The files run in ONE transaction, in name order (relay/schema.py;
-- `python -m relay db install --print` for a migration). Re-running them replaces function
-- bodies and nothing else: no table is rewritten, and what the operator set (relay.settings)
-- is kept.
--
-- DURABLE HISTORY SEAM (issue 13): version 2 adds the outbox, the commit-time numbering and
-- the epoch to this schema (design: /work/proto/durable/design.md). It bumps relay.meta.version
-- and the guard below; the wire format (r1) and the listener's routing stay as they are.

-- A re-install must never queue behind a long transaction (and make every writer queue behind
-- it): fail instead, and let the operator retry.
SET LOCAL lock_timeout = '3s';
-- Two installers at once would trip over each other's CREATE OR REPLACE ("tuple concurrently
-- updated"). Two-int advisory keys never collide with an app's bigint keys.
SELECT pg_advisory_xact_lock(1919249505, 3);  -- 1919249505 = 'rela'; 3 = install

DO $guard$
DECLARE
    installed integer;
BEGIN
    IF to_regclass('relay.meta') IS NOT NULL THEN
        EXECUTE 'SELECT version FROM relay.meta' INTO installed;
        IF installed > 1 THEN
            RAISE EXCEPTION 'relay: this database has relay SQL version %, newer than this installer (version 1); refusing to downgrade', installed
                USING HINT = 'Install with the relay release that matches the database, or newer.';
        END IF;
    END IF;
END
$guard$;

-- An upgrade from relay's SQL before version 1 (relay_notify_owner in public, no schema relay):
-- relays of that version LISTEN per user and would hear nothing from the new relay_notify
-- during the rolling deploy that follows, so 003 turns legacy_notify on (remembered here, for
-- this transaction only).
SELECT set_config('relay.upgrade_from_v0',
                  (to_regclass('relay.meta') IS NULL AND to_regprocedure(
                      'public.relay_notify_owner(text,text,text,text,json,text,boolean)')
                      IS NOT NULL)::text, true);

CREATE SCHEMA IF NOT EXISTS relay;
-- Nothing in schema relay is for other roles: apps publish through public.relay_publish and
-- public.relay_notify (SECURITY DEFINER); relay's listener connects as the installing role.
REVOKE ALL ON SCHEMA relay FROM PUBLIC;

-- What is installed. One row.
CREATE TABLE IF NOT EXISTS relay.meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL DEFAULT 0,        -- relay SQL version installed
    protocol integer NOT NULL DEFAULT 1,       -- wire format major: r1
    installed_at timestamptz NOT NULL DEFAULT now(),
    upgraded_at timestamptz
);

-- Settings (relay.set(name, value)); writers never read this table: relay._compile() turns
-- it into constant functions (relay._cfg_*).
CREATE TABLE IF NOT EXISTS relay.settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    description text NOT NULL
);
