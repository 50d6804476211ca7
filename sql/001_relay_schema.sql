-- relay's database side, part 1 of 3: the version guard, schema relay, its tables.
--
-- relay SQL version 3: one shared NOTIFY channel (wire protocol r1, docs/architecture.md
-- "The shared channel") and the durable history (docs/architecture.md "The durable history"):
-- messages staged in the writer's transaction, numbered at commit in commit order, kept in
-- relay.outbox for a retention period. Version 1 was the shared channel alone ("outbox off");
-- version 2 kept every channel's head in relay.channel, updated by every commit; version 3
-- reads it from the channel's newest outbox row (relay.channel keeps the heads of channels
-- whose rows all expired), so numbering writes only the outbox rows.
-- The files run in ONE transaction, in name order (relay/schema.py; `python -m relay db
-- install --print` for a migration). Re-running them replaces function bodies and nothing
-- else: no table is rewritten, no lock a writer needs is taken, and neither what the operator
-- set (relay.settings) nor the history's identity (relay.meta's epoch) is overwritten.

-- A re-install must never queue behind a long transaction (and make every writer queue behind
-- it): fail instead, and let the operator retry.
SET LOCAL lock_timeout = '3s';
-- Two installers at once would trip over each other's CREATE OR REPLACE ("tuple concurrently
-- updated"). Two-int advisory keys never collide with an app's bigint keys.
-- Keys (class 1919249505 = 'rela'): 1 commit lock (numbering), 2 cleanup, 3 install/compile.
SELECT pg_advisory_xact_lock(1919249505, 3);

-- The guard, and what was installed before, remembered for this transaction only (003 reads
-- it): 'none', '0' (relay's SQL before the shared channel: relay_notify_owner in public, no
-- schema relay), '1' (the shared channel without the outbox), '2' or '3'.
DO $guard$
DECLARE
    installed integer;
BEGIN
    IF to_regclass('relay.meta') IS NOT NULL THEN
        EXECUTE 'SELECT max(version) FROM relay.meta' INTO installed;
        IF installed > 3 THEN
            RAISE EXCEPTION 'relay: this database has relay SQL version %, newer than this installer (version 3); refusing to downgrade', installed
                USING HINT = 'Install with the relay release that matches the database, or newer.';
        END IF;
    END IF;
    PERFORM set_config('relay.upgrade_from', CASE
        WHEN installed IS NOT NULL THEN installed::text
        WHEN to_regprocedure('public.relay_notify_owner(text,text,text,text,json,text,boolean)')
             IS NOT NULL THEN '0'
        ELSE 'none' END, true);
END
$guard$;

CREATE SCHEMA IF NOT EXISTS relay;
-- Nothing in schema relay is for other roles: apps publish through public.relay_publish and
-- public.relay_notify (SECURITY DEFINER); relay's listener connects as the installing role.
REVOKE ALL ON SCHEMA relay FROM PUBLIC;

-- What is installed, and the history's identity (the epoch and the fingerprint it was issued
-- under: docs/architecture.md "Epoch"). One row; never replaced by a re-install.
CREATE TABLE IF NOT EXISTS relay.meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL DEFAULT 0,        -- relay SQL version installed
    protocol integer NOT NULL DEFAULT 1,       -- wire format major: r1
    installed_at timestamptz NOT NULL DEFAULT now(),
    upgraded_at timestamptz
);
-- Version 2's columns, added only when missing: ALTER TABLE takes an ACCESS EXCLUSIVE lock even
-- when IF NOT EXISTS finds the column, and a re-install must take no lock anyone waits for.
DO $meta$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'relay.meta'::regclass
                   AND attname = 'epoch' AND NOT attisdropped) THEN
        ALTER TABLE relay.meta
            ADD COLUMN epoch text,                      -- 12 hex digits, random
            ADD COLUMN epoch_started_at timestamptz,
            ADD COLUMN epoch_reason text,
            ADD COLUMN system_identifier bigint,        -- pg_control_system()
            ADD COLUMN timeline integer,                -- of pg_current_wal_lsn()
            ADD COLUMN database_oid oid,
            ADD COLUMN neon_timeline text,              -- current_setting('neon.timeline_id')
            ADD COLUMN deleted_upto bigint NOT NULL DEFAULT 0,  -- every pos <= this may be gone
            -- Why writers keep version 1's behaviour although the outbox is on (relay
            -- listeners of version 1 are connected), or NULL.
            ADD COLUMN outbox_held text;
    END IF;
    -- When a relay listener that keeps the durable history (relay.hello(2)) first connected.
    -- Until one has, writers keep nothing: no relay reads the outbox (main's listener of
    -- version 1 drops numbered frames), and nothing would ever clean it.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'relay.meta'::regclass
                   AND attname = 'durable_since' AND NOT attisdropped) THEN
        ALTER TABLE relay.meta ADD COLUMN durable_since timestamptz;
    END IF;
END
$meta$;

-- Settings (relay.set(name, value)); writers never read this table: relay._compile() turns
-- it into constant functions (relay._cfg_*).
CREATE TABLE IF NOT EXISTS relay.settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    description text NOT NULL
);

-- One row per published message, kept for the setting 'retention'. The tables below that fill
-- and empty all the time (this one, relay.staged, relay.unsettled, relay.commits) have
-- vacuum_truncate = false, as a precaution: cutting empty pages off the end of a table takes an
-- ACCESS EXCLUSIVE lock (conditionally, and given up within ~20 ms when someone waits).
CREATE TABLE IF NOT EXISTS relay.outbox (
    pos bigint PRIMARY KEY,        -- commit order, database-wide (holes allowed)
    channel text NOT NULL,
    seq bigint NOT NULL,           -- per channel: 1, 2, 3 … in commit order, no holes
    tag integer NOT NULL,          -- random: proves that a cursor belongs to this history
    payload json NOT NULL,         -- exactly what the app published
    created_at timestamptz NOT NULL,
    CONSTRAINT outbox_channel_seq UNIQUE (channel, seq)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05,
       vacuum_truncate = false);

-- The head (last seq, that message's tag and pos) of channels whose rows have all left the
-- outbox: a channel's head is its newest outbox row, and relay.cleanup() keeps it here when
-- that row goes, so that a channel's seq never starts again. Writers only read it (version 2's
-- updated it on every commit: a row after an upgrade from 2 may be older than the outbox's,
-- which wins). One row (~100 bytes) per channel idle for longer than retention.
CREATE TABLE IF NOT EXISTS relay.channel (
    channel text PRIMARY KEY,
    seq bigint NOT NULL,
    tag integer NOT NULL,
    pos bigint NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (fillfactor = 70);

-- Messages of READ COMMITTED transactions between relay_publish and commit. UNLOGGED: a row
-- lives only inside its own uncommitted transaction, so a crash (which aborts that transaction
-- anyway) loses nothing, and no WAL is written for it.
CREATE UNLOGGED TABLE IF NOT EXISTS relay.staged (
    xid xid8 NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    channel text NOT NULL,
    payload json NOT NULL,
    fallback json,                 -- relay_notify's reference, kept only for a large payload
    arm boolean NOT NULL           -- the transaction's first row: its trigger numbers them all
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
       vacuum_truncate = false);

-- Messages of REPEATABLE READ / SERIALIZABLE transactions. Those cannot number at commit (their
-- snapshot is old: updating a channel's head would raise a serialization failure), so they
-- commit the message unnumbered plus a commit record, and relay.settle() numbers it.
CREATE TABLE IF NOT EXISTS relay.unsettled (
    xid xid8 NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    channel text NOT NULL,
    payload json NOT NULL,
    arm boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (vacuum_truncate = false);

CREATE TABLE IF NOT EXISTS relay.commits (
    xid xid8 NOT NULL,
    ordinal bigint NOT NULL,       -- from relay.pos under the commit lock: commit order
    committed_at timestamptz NOT NULL
) WITH (vacuum_truncate = false);

-- The relay listeners that said hello, and which SQL version's frames each understands. While a
-- listener of version 1 (it drops numbered frames) is connected, writers keep version 1's
-- behaviour (docs/operations.md "Upgrades"). Rows of finished backends are pruned.
CREATE TABLE IF NOT EXISTS relay.listeners (
    pid integer PRIMARY KEY,
    backend_start timestamptz,
    speaks integer NOT NULL,       -- 1: main's listener before the durable history; 2: durable
    hello_at timestamptz NOT NULL
);

-- pos. CACHE 1 (the default) matters: a backend-local cache would hand out numbers out of
-- commit order. Only holders of the commit lock call nextval on it.
CREATE SEQUENCE IF NOT EXISTS relay.pos AS bigint CACHE 1;
-- Unix time of the last sign of life of a relay listener. A sequence, not a row: writers of
-- any isolation level read it with pg_sequence_last_value(), which takes no snapshot and no
-- SSI predicate lock.
CREATE SEQUENCE IF NOT EXISTS relay.heartbeat AS bigint CACHE 1;

-- Indexes through the catalog: CREATE INDEX IF NOT EXISTS takes its SHARE lock on the table
-- BEFORE it looks for the index, so a re-install would wait for every open publishing
-- transaction, and every new writer would queue behind it.
DO $indexes$
BEGIN
    IF to_regclass('relay.staged_xid') IS NULL THEN
        CREATE INDEX staged_xid ON relay.staged (xid);
    END IF;
    IF to_regclass('relay.unsettled_xid') IS NULL THEN
        CREATE INDEX unsettled_xid ON relay.unsettled (xid);
    END IF;
    IF to_regclass('relay.commits_ordinal') IS NULL THEN
        CREATE INDEX commits_ordinal ON relay.commits (ordinal);
    END IF;
END
$indexes$;
