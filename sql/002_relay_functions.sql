-- relay's database side, part 2 of 3: the functions (all CREATE OR REPLACE).
--
-- Every function pins search_path to pg_catalog, pg_temp (pg_temp last: a temporary table can
-- never shadow one of relay's, and functions and operators are never looked up in pg_temp)
-- and names every relay object with its schema: a role that can create objects earlier in a
-- writer's search_path cannot make relay's trigger run its code. Writer-side functions are
-- SECURITY DEFINER: an app's role needs no privilege on schema relay, and the commit trigger
-- runs with the same rights whichever role is current at COMMIT.
--
-- PostgreSQL has no permissions on NOTIFY and LISTEN: any role that can connect to this
-- database can LISTEN to relay's channel (and read every message) or NOTIFY it (and forge
-- one). The database is relay's trust boundary (docs/security.md).
--
-- Advisory lock keys (two-int form, class 1919249505 = 'rela'): 1 the commit lock (numbering),
-- 2 cleanup, 3 install and anything that recompiles the settings. Order, whoever takes more
-- than one: 3 before 1; 2 never waits for 3.

------------------------------------------------------------------------------------------------
-- Writer-side configuration, compiled from relay.settings (and relay.meta.outbox_held) by
-- relay._compile(). IMMUTABLE constant functions: PL/pgSQL folds them into its cached plans, so
-- reading them costs nothing per call, and replacing them invalidates those plans in every
-- session at once (tests/test_sql_outbox.py checks that a change reaches an open session).
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION relay._cfg_outbox() RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT false $$;
-- The operator's setting alone, held or not: while it is on, writers stage their messages and
-- COMMIT decides (under the commit lock) whether they are numbered, so that the hold's and
-- the release's announcements (kind c, body outbox) split the stream exactly: every kind n
-- frame of the held period comes before the release's, every numbered one after it.
CREATE OR REPLACE FUNCTION relay._cfg_stage() RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT false $$;
CREATE OR REPLACE FUNCTION relay._cfg_channel() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT 'relay'::text $$;
CREATE OR REPLACE FUNCTION relay._cfg_legacy() RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT false $$;
CREATE OR REPLACE FUNCTION relay._cfg_dormant_after() RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT 3600::bigint $$;
CREATE OR REPLACE FUNCTION relay._cfg_notify_max() RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT 100 $$;
CREATE OR REPLACE FUNCTION relay._cfg_lock_wait() RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT interval '5 seconds' $$;

CREATE OR REPLACE FUNCTION relay._compile() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s record;
    held boolean := (SELECT outbox_held IS NOT NULL FROM relay.meta);
BEGIN
    -- Two sessions replacing the same function at once fail ("tuple concurrently updated").
    PERFORM pg_advisory_xact_lock(1919249505, 3);
    SELECT
        max(value) FILTER (WHERE name = 'outbox') AS outbox,
        max(value) FILTER (WHERE name = 'notify_channel') AS channel,
        max(value) FILTER (WHERE name = 'legacy_notify') AS legacy,
        max(value) FILTER (WHERE name = 'dormant_after') AS dormant,
        max(value) FILTER (WHERE name = 'notify_per_message_max') AS notify_max,
        max(value) FILTER (WHERE name = 'commit_lock_wait') AS lock_wait
    INTO s FROM relay.settings;
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_outbox() RETURNS boolean LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::boolean $c$',
                   s.outbox::boolean AND NOT coalesce(held, false));
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_stage() RETURNS boolean LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::boolean $c$',
                   s.outbox::boolean);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_channel() RETURNS text LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::text $c$',
                   s.channel);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_legacy() RETURNS boolean LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::boolean $c$',
                   s.legacy::boolean);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_dormant_after() RETURNS bigint LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %s::bigint $c$',
                   extract(epoch FROM s.dormant::interval)::bigint);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_notify_max() RETURNS integer LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %s $c$',
                   s.notify_max::integer);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_lock_wait() RETURNS interval LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::interval $c$',
                   s.lock_wait::interval);
END
$fn$;

-- Change a setting: validated, stored, compiled into the writer side, announced to listeners
-- (kind c, on the channel they LISTEN to now, at commit).
CREATE OR REPLACE FUNCTION relay.set(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    old_channel text := relay._cfg_channel();
BEGIN
    PERFORM pg_advisory_xact_lock(1919249505, 3);
    CASE p_name
        WHEN 'outbox', 'legacy_notify' THEN
            PERFORM p_value::boolean;
        WHEN 'notify_channel' THEN
            IF p_value IS NULL OR p_value = '' OR octet_length(p_value) > 63 THEN
                RAISE EXCEPTION 'relay.set: notify_channel must be 1..63 bytes';
            END IF;
        WHEN 'commit_lock_wait' THEN
            IF p_value::interval < interval '0' THEN
                RAISE EXCEPTION 'relay.set: commit_lock_wait must be 0 or more';
            END IF;
        WHEN 'retention', 'dormant_after' THEN
            IF p_value::interval <= interval '0' THEN
                RAISE EXCEPTION 'relay.set: % must be a positive interval', p_name;
            END IF;
        WHEN 'notify_per_message_max' THEN
            IF p_value::integer < 0 THEN
                RAISE EXCEPTION 'relay.set: notify_per_message_max must be 0 or more';
            END IF;
        ELSE
            RAISE EXCEPTION 'relay.set: unknown setting %', p_name;
    END CASE;
    UPDATE relay.settings SET value = p_value WHERE name = p_name;
    IF (SELECT value::interval FROM relay.settings WHERE name = 'dormant_after')
            < (SELECT value::interval FROM relay.settings WHERE name = 'retention') THEN
        RAISE EXCEPTION 'relay.set: dormant_after must be at least retention';
    END IF;
    PERFORM relay._compile();
    PERFORM pg_catalog.pg_notify(old_channel, 'r1 c 0 0 00000000 0  ' || p_name);
END
$fn$;

------------------------------------------------------------------------------------------------
-- Publishing. One NOTIFY per message on the shared channel, in the r1 wire format:
--
--   r1 <kind> <pos> <seq> <tag> <chlen> <channel> <body>
--
-- single spaces; <tag> 8 hex digits; <chlen> is the channel's length in characters (code
-- points), so the channel may hold spaces or quotes; <body> is everything after the space that
-- follows the channel. The listener routes on that prefix without parsing the JSON. Kinds:
--   m  a numbered message (pos, seq, tag set), its payload in the body
--   r  a numbered message too big for one NOTIFY: empty body, the listener reads the row
--   s  sync: rows were committed that no NOTIFY carries (a REPEATABLE READ / SERIALIZABLE
--      commit, a big transaction, a NOTIFY queue over half full): settle, then read from pos
--   n  a message without a database number (outbox off or held, a read-only transaction, no
--      relay alive for dormant_after, numbering failed): pos and seq 0, a random tag (NOTIFY
--      collapses identical payloads of one transaction: the tag keeps two messages two)
--   e  a new epoch (body: the epoch); i relay's SQL was installed (body: its version);
--   c  a setting changed (body: its name; 'outbox' also when a version 1 listener holds it)
-- Anything else is a newer SQL's: a listener treats it as s.
--
-- The header is built inline everywhere: a SQL-language helper called from PL/pgSQL is parsed
-- and planned again in every transaction.
------------------------------------------------------------------------------------------------

-- NOTIFY one message, kind n. NOTIFY refuses a payload of 8000 bytes or more inside the
-- writer's transaction, so the whole frame, header included (the channel travels in it), must
-- be at most 7999 bytes; otherwise p_fallback goes instead (relay_notify's reference to the
-- row), or {"truncated":true} when there is none or it does not fit either.
CREATE OR REPLACE FUNCTION relay._notify_unnumbered(p_channel text, p_body text, p_fallback text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    head text := 'r1 n 0 0 ' || lpad(to_hex((random() * 2147483646)::integer), 8, '0') || ' '
                 || length(p_channel) || ' ' || p_channel || ' ';
    body text := p_body;
BEGIN
    IF octet_length(head) + octet_length(body) > 7999 THEN
        body := CASE WHEN p_fallback IS NOT NULL
                          AND octet_length(head) + octet_length(p_fallback) <= 7999
                     THEN p_fallback ELSE '{"truncated":true}' END;
    END IF;
    PERFORM pg_catalog.pg_notify(relay._cfg_channel(), head || body);
END
$fn$;

-- relay_publish's body. p_fallback: what to send instead when the message does not fit one
-- NOTIFY and there is no outbox to carry it (relay_notify passes a reference to the row).
--
-- Per transaction, the first publish decides the path and remembers it in the transaction-
-- local setting relay.armed (rolled back with a savepoint, like the rows):
--   '1' staged, one message so far (READ COMMITTED: numbered by the deferred trigger
--       relay_commit at COMMIT, from the arming row alone); 's' staged, more than one. (Only
--       this version writes '1': a transaction that published under an older body of this
--       function, whose 's' means any number, is numbered the general way.)
--   'u' unsettled (REPEATABLE READ / SERIALIZABLE: numbered later by relay.settle())
--   'n' unnumbered NOTIFY now (outbox off, read-only transaction, dormant; not when the
--       outbox is only held: those stage, and COMMIT sends them unnumbered while held)
-- so that the transaction's further publishes cost one current_setting() and one INSERT.
-- Nothing is locked and nothing is numbered here: two writers publishing to the same channels
-- in any order never wait for each other before COMMIT.
CREATE OR REPLACE FUNCTION relay._publish(p_channel text, p_payload json, p_fallback json)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    path text := current_setting('relay.armed', true);
    arm boolean := false;
BEGIN
    -- Never fail the writer's transaction over a bad argument: warn and drop. 63 bytes is
    -- PostgreSQL's identifier limit, kept so that a channel means the same with per-user
    -- LISTEN (RELAY_USER_CHANNELS=listen) and through this channel.
    IF p_channel IS NULL OR p_channel = '' OR octet_length(p_channel) > 63 THEN
        RAISE WARNING 'relay_publish: channel % is not 1..63 bytes; not published',
            quote_nullable(left(p_channel, 80));
        RETURN;
    END IF;
    IF p_payload IS NULL THEN
        RAISE WARNING 'relay_publish: NULL payload for channel %; not published',
            quote_literal(p_channel);
        RETURN;
    END IF;

    -- Rolling deploys and roll-backs: relays from before version 1 LISTEN per user and read
    -- the bare payload there (a relay of this version in `listen` mode would hear both).
    IF relay._cfg_legacy() THEN
        IF octet_length(p_payload::text) < 8000 THEN
            PERFORM pg_catalog.pg_notify(p_channel, p_payload::text);
        ELSIF p_fallback IS NOT NULL AND octet_length(p_fallback::text) < 8000 THEN
            PERFORM pg_catalog.pg_notify(p_channel, p_fallback::text);
        END IF;
    END IF;

    IF path IS NULL OR path = '' THEN  -- the transaction's first publish (or since its trigger)
        IF NOT relay._cfg_stage()
           OR current_setting('transaction_read_only') = 'on'
           OR extract(epoch FROM clock_timestamp())::bigint
                - pg_catalog.pg_sequence_last_value('relay.heartbeat'::regclass)
              > relay._cfg_dormant_after()
        THEN
            path := 'n';
        ELSIF current_setting('transaction_isolation') = 'read committed' THEN
            path := '1';
            arm := true;
        ELSIF NOT relay._cfg_outbox() THEN
            path := 'n';  -- held: relay.settle() would number these later, whatever the hold
        ELSE
            path := 'u';
            arm := true;
        END IF;
        PERFORM set_config('relay.armed', path, true);
    END IF;

    IF path = '1' AND NOT arm THEN
        -- A second message: COMMIT takes the general path (relay._number_staged). The mark is
        -- rolled back with a savepoint, like the row.
        PERFORM set_config('relay.armed', 's', true);
        path := 's';
    END IF;
    IF path IN ('1', 's') THEN
        -- The fallback is kept only where it could be needed: the message goes out unnumbered
        -- after all (numbering failed, or the outbox was held off before COMMIT) and is too
        -- big for one NOTIFY.
        INSERT INTO relay.staged (xid, channel, payload, fallback, arm)
        VALUES (pg_current_xact_id(), p_channel, p_payload,
                CASE WHEN octet_length(p_payload::text) > 7800 THEN p_fallback END, arm);
    ELSIF path = 'u' THEN
        INSERT INTO relay.unsettled (xid, channel, payload, arm)
        VALUES (pg_current_xact_id(), p_channel, p_payload, arm);
    ELSE
        PERFORM relay._notify_unnumbered(p_channel, p_payload::text, p_fallback::text);
    END IF;
END
$fn$;

------------------------------------------------------------------------------------------------
-- Numbering. Runs with the commit lock held; the lock is released when the transaction ends,
-- after its commit is visible, so numbers are handed out in commit order. PostgreSQL already
-- lets one NOTIFYing commit at a time through its queue lock (taken after every trigger);
-- relay's lock is always taken before that one and is the only lock relay waits for at COMMIT:
-- no cycle (docs/architecture.md "The durable history").
------------------------------------------------------------------------------------------------

-- Number the staged messages of the committing READ COMMITTED transaction p_xid in publish
-- order, keep them in the outbox and NOTIFY them; returns how many. A channel's last seq is
-- its newest outbox row's (relay.channel only for channels whose rows all expired: see
-- relay.cleanup), so numbering writes nothing but the outbox rows (SQL version 3).
CREATE OR REPLACE FUNCTION relay._number_staged(p_xid xid8) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    n integer;
    base bigint;
    salt bigint;
    each_one boolean;
    now_ts timestamptz;
BEGIN
    SELECT count(*) INTO n FROM relay.staged WHERE xid = p_xid;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    -- ---- the commit lock: serialised from here to the end of the transaction ----
    -- Uncontended, it is taken at once. Otherwise wait at most commit_lock_wait (or the app's
    -- own lock_timeout when shorter): COMMIT is not subject to statement_timeout, so without a
    -- bound a transaction holding the lock for long (SET CONSTRAINTS ALL IMMEDIATE) would stall
    -- every publishing writer; with it they commit with their messages unnumbered.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(1919249505, 1) THEN
        PERFORM relay._wait_commit_lock();  -- bounded: commit_lock_wait
    END IF;
    IF EXISTS (SELECT 1 FROM relay.commits) THEN
        PERFORM relay._settle_locked();  -- earlier RR/SER commits come first on every channel
    END IF;
    -- The outbox was held off (a relay listener of version 1 connected) after this transaction
    -- published: such a listener drops numbered frames, so send these as version 1 did. (The
    -- statement above locked a table, which made this session see the recompiled setting.)
    IF NOT relay._cfg_outbox() THEN
        PERFORM relay._notify_unnumbered(s.channel, s.payload::text, s.fallback::text)
        FROM (SELECT channel, payload, fallback FROM relay.staged WHERE xid = p_xid
              ORDER BY id) s;
        DELETE FROM relay.staged WHERE xid = p_xid;
        RETURN n;
    END IF;
    now_ts := clock_timestamp();
    -- A block of n consecutive positions (nobody else calls nextval without the lock).
    base := nextval('relay.pos'::regclass);
    IF n > 1 THEN
        PERFORM setval('relay.pos'::regclass, base + n - 1);
    END IF;
    -- One NOTIFY per message normally; one sync NOTIFY for a big transaction, or when the
    -- NOTIFY queue is filling up: a full queue fails every notifying commit, and with the outbox
    -- relay need not be one of them (listeners read the rows instead).
    each_one := n <= relay._cfg_notify_max() AND pg_catalog.pg_notification_queue_usage() < 0.5;

    -- One statement, straight from relay.staged: each row's pos from its publish order, its
    -- seq from its channel's head (an index probe per row: heads are read, never written)
    -- and its place among the channel's rows, its tag a hash of its pos under a random salt
    -- of this transaction's. Measured against one INSERT per message (version 2's path for up
    -- to 8): as cheap from 2 messages on, 14% less backend CPU at 5.
    salt := (random() * 9007199254740991)::bigint;
    IF n > 1000 THEN
        PERFORM set_config('work_mem', '64MB', true);  -- a burst's two sorts stay in memory
    END IF;
    IF each_one THEN
        WITH rows AS (
            INSERT INTO relay.outbox (pos, channel, seq, tag, payload, created_at)
            SELECT r.pos, r.channel, r.seq,
                   (pg_catalog.hashint8extended(r.pos, salt) & 2147483647)::integer,
                   r.payload, now_ts
            FROM (SELECT s.channel, s.payload,
                         base - 1 + row_number() OVER (ORDER BY s.id) AS pos,
                         coalesce((SELECT o.seq FROM relay.outbox o WHERE o.channel = s.channel
                                   ORDER BY o.seq DESC LIMIT 1),
                                  (SELECT c.seq FROM relay.channel c
                                   WHERE c.channel = s.channel), 0)
                             + row_number() OVER (PARTITION BY s.channel ORDER BY s.id) AS seq
                  FROM relay.staged s WHERE s.xid = p_xid) r
            RETURNING pos, payload::text AS body,
                ' ' || pos || ' ' || seq || ' ' || lpad(to_hex(tag), 8, '0') || ' '
                    || length(channel) || ' ' || channel || ' ' AS h
        )
        SELECT count(*) INTO n FROM (
            SELECT pg_catalog.pg_notify(relay._cfg_channel(),
                       CASE WHEN octet_length(h) + octet_length(body) <= 7995
                            THEN 'r1 m' || h || body ELSE 'r1 r' || h END)
            FROM rows ORDER BY pos
        ) sent;
    ELSE
        -- The same without the frames: one sync NOTIFY (below) wakes the listeners.
        INSERT INTO relay.outbox (pos, channel, seq, tag, payload, created_at)
        SELECT r.pos, r.channel, r.seq,
               (pg_catalog.hashint8extended(r.pos, salt) & 2147483647)::integer,
               r.payload, now_ts
        FROM (SELECT s.channel, s.payload,
                     base - 1 + row_number() OVER (ORDER BY s.id) AS pos,
                     coalesce((SELECT o.seq FROM relay.outbox o WHERE o.channel = s.channel
                               ORDER BY o.seq DESC LIMIT 1),
                              (SELECT c.seq FROM relay.channel c
                               WHERE c.channel = s.channel), 0)
                         + row_number() OVER (PARTITION BY s.channel ORDER BY s.id) AS seq
              FROM relay.staged s WHERE s.xid = p_xid) r;
    END IF;
    DELETE FROM relay.staged WHERE xid = p_xid;
    IF NOT each_one AND pg_catalog.pg_notification_queue_usage() < 0.9 THEN
        PERFORM pg_catalog.pg_notify(relay._cfg_channel(), 'r1 s ' || base || ' 0 00000000 0  ');
    END IF;
    RETURN n;
END
$fn$;

-- The same for a REPEATABLE READ / SERIALIZABLE transaction's messages, from relay.settle():
-- no NOTIFY (its commit sent kind s). The caller holds the commit lock.
CREATE OR REPLACE FUNCTION relay._number_unsettled(p_xid xid8) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    n integer;
    base bigint;
    salt bigint := (random() * 9007199254740991)::bigint;
    now_ts timestamptz := clock_timestamp();
BEGIN
    SELECT count(*) INTO n FROM relay.unsettled WHERE xid = p_xid;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    base := nextval('relay.pos'::regclass);
    IF n > 1 THEN
        PERFORM setval('relay.pos'::regclass, base + n - 1);
    END IF;
    -- As relay._number_staged's set-based statement.
    INSERT INTO relay.outbox (pos, channel, seq, tag, payload, created_at)
    SELECT r.pos, r.channel, r.seq,
           (pg_catalog.hashint8extended(r.pos, salt) & 2147483647)::integer, r.payload, now_ts
    FROM (SELECT u.channel, u.payload,
                 base - 1 + row_number() OVER (ORDER BY u.id) AS pos,
                 coalesce((SELECT o.seq FROM relay.outbox o WHERE o.channel = u.channel
                           ORDER BY o.seq DESC LIMIT 1),
                          (SELECT c.seq FROM relay.channel c WHERE c.channel = u.channel), 0)
                     + row_number() OVER (PARTITION BY u.channel ORDER BY u.id) AS seq
          FROM relay.unsettled u WHERE u.xid = p_xid) r;
    DELETE FROM relay.unsettled WHERE xid = p_xid;
    RETURN n;
END
$fn$;

-- Number what REPEATABLE READ / SERIALIZABLE transactions committed, in their commit order.
-- The caller holds the commit lock.
CREATE OR REPLACE FUNCTION relay._settle_locked() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    c record;
    total integer := 0;
BEGIN
    FOR c IN SELECT xid, min(ordinal) AS ordinal FROM relay.commits GROUP BY xid ORDER BY 2 LOOP
        total := total + relay._number_unsettled(c.xid);
        DELETE FROM relay.commits WHERE xid = c.xid;
    END LOOP;
    RETURN total;
END
$fn$;

-- For listeners (on kind s, and before a catch-up scan): number whatever is committed and not
-- numbered yet, so that the scan sees it. Waits for the commit lock: call it under a timeout.
CREATE OR REPLACE FUNCTION relay.settle() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM relay.commits) THEN
        RETURN 0;  -- the common case takes no lock
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(1919249505, 1);
    RETURN relay._settle_locked();
END
$fn$;

-- The commit lock, when pg_try_advisory_xact_lock did not get it at once: wait at most
-- commit_lock_wait (or the app's own lock_timeout when shorter). COMMIT is not subject to
-- statement_timeout, so without a bound a transaction holding the lock for long (SET
-- CONSTRAINTS ALL IMMEDIATE) would stall every publishing writer; with it they commit with
-- their messages unnumbered (the caller's exception block). Raises lock_not_available.
CREATE OR REPLACE FUNCTION relay._wait_commit_lock() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    app_timeout text := current_setting('lock_timeout');
    bound interval := relay._cfg_lock_wait();
BEGIN
    IF bound > interval '0' AND (app_timeout = '0' OR app_timeout::interval > bound) THEN
        PERFORM set_config('lock_timeout', (extract(epoch FROM bound) * 1000)::bigint::text, true);
        PERFORM pg_catalog.pg_advisory_xact_lock(1919249505, 1);
        PERFORM set_config('lock_timeout', app_timeout, true);
    ELSE
        PERFORM pg_catalog.pg_advisory_xact_lock(1919249505, 1);
    END IF;
END
$fn$;

-- The deferred constraint trigger relay_commit: fires at COMMIT (or PREPARE, or SET
-- CONSTRAINTS … IMMEDIATE) for the arming row of a transaction — once per transaction.
--
-- A transaction that staged one message (nearly all: relay.armed is still '1') is numbered
-- right here from the arming row itself (NEW): one DELETE before the commit lock, then under
-- it one INSERT into the outbox (its seq read from the channel's newest row) and the NOTIFY. Every
-- statement and expression of PL/pgSQL is set up again in each transaction (~1-40 us each),
-- so this path has as few as it can; more messages go to relay._number_staged.
CREATE OR REPLACE FUNCTION relay._on_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    one boolean := current_setting('relay.armed', true) = '1';
    me xid8 := pg_current_xact_id();
    ordinal bigint;
    v_pos bigint;
    v_seq bigint;
    v_tag integer;
    v_head text;
    v_body text;
BEGIN
    -- Whatever is published from now on (an app's deferred trigger firing after this one)
    -- arms again and gets its own firing, still inside this COMMIT.
    PERFORM set_config('relay.armed', '', true);

    IF TG_TABLE_NAME = 'unsettled' THEN
        -- REPEATABLE READ / SERIALIZABLE: read nothing (no snapshot-dependent update, no SSI
        -- predicate lock), only write. The ordinal, taken under the commit lock, is this
        -- commit's place in commit order; relay.settle() numbers the rows later.
        BEGIN
            IF NOT pg_catalog.pg_try_advisory_xact_lock(1919249505, 1) THEN
                PERFORM relay._wait_commit_lock();
            END IF;
        EXCEPTION WHEN OTHERS OR query_canceled THEN  -- never fail the write
            RAISE WARNING 'relay: commit lock not taken (%): the numbering order of this transaction is approximate', SQLERRM;
        END;
        ordinal := nextval('relay.pos'::regclass);
        INSERT INTO relay.commits (xid, ordinal, committed_at)
        VALUES (me, ordinal, clock_timestamp());
        IF pg_catalog.pg_notification_queue_usage() < 0.9 THEN
            PERFORM pg_catalog.pg_notify(relay._cfg_channel(),
                                         'r1 s ' || ordinal || ' 0 00000000 0  ');
        END IF;
        RETURN NULL;
    END IF;

    BEGIN
        IF NOT one THEN
            PERFORM relay._number_staged(me);  -- takes the commit lock
            RETURN NULL;
        END IF;
        -- One message: the arming row. Out of relay.staged before the commit lock, and what
        -- does not depend on the numbers (its tag, the frame's tail) made before it too.
        DELETE FROM relay.staged WHERE xid = me;
        v_tag := (random() * 2147483646)::integer;
        v_head := ' ' || lpad(to_hex(v_tag), 8, '0') || ' ' || length(NEW.channel) || ' '
                  || NEW.channel || ' ';
        v_body := NEW.payload::text;
        -- ---- the commit lock: serialised from here to the end of the transaction ----
        IF NOT pg_catalog.pg_try_advisory_xact_lock(1919249505, 1) THEN
            PERFORM relay._wait_commit_lock();
        END IF;
        IF EXISTS (SELECT 1 FROM relay.commits) THEN
            PERFORM relay._settle_locked();  -- earlier RR/SER commits come first on every channel
        END IF;
        -- Held off after this transaction published (see relay._number_staged).
        IF NOT relay._cfg_outbox() THEN
            PERFORM relay._notify_unnumbered(NEW.channel, NEW.payload::text, NEW.fallback::text);
            RETURN NULL;
        END IF;
        -- Its position, and its seq: the channel's newest outbox row's plus one (relay.channel
        -- holds the heads of channels whose rows all expired), read in this one statement.
        INSERT INTO relay.outbox (pos, channel, seq, tag, payload, created_at)
        VALUES (nextval('relay.pos'::regclass), NEW.channel,
                coalesce((SELECT o.seq FROM relay.outbox o WHERE o.channel = NEW.channel
                          ORDER BY o.seq DESC LIMIT 1),
                         (SELECT c.seq FROM relay.channel c WHERE c.channel = NEW.channel),
                         0) + 1,
                v_tag, NEW.payload, clock_timestamp())
        RETURNING pos, seq INTO v_pos, v_seq;
        IF relay._cfg_notify_max() >= 1 AND pg_catalog.pg_notification_queue_usage() < 0.5 THEN
            v_head := ' ' || v_pos || ' ' || v_seq || v_head;
            PERFORM pg_catalog.pg_notify(relay._cfg_channel(),
                CASE WHEN octet_length(v_head) + octet_length(v_body) <= 7995  -- + 4: "r1 m"
                     THEN 'r1 m' || v_head || v_body ELSE 'r1 r' || v_head END);
        ELSIF pg_catalog.pg_notification_queue_usage() < 0.9 THEN
            PERFORM pg_catalog.pg_notify(relay._cfg_channel(),
                                         'r1 s ' || v_pos || ' 0 00000000 0  ');
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        -- Anything (commit_lock_wait or the app's lock_timeout expiring while COMMIT waits for
        -- the lock, a deadlock, a cancel, a bug): the write must still commit. The rows are back
        -- (the block's rollback); send them unnumbered, and listeners resync those channels.
        -- query_canceled is not part of OTHERS; statement_timeout does not apply to COMMIT.
        RAISE WARNING 'relay: numbering failed (% %); messages sent unnumbered', SQLSTATE, SQLERRM;
        BEGIN
            PERFORM relay._notify_unnumbered(s.channel, s.payload::text, s.fallback::text)
            FROM (SELECT channel, payload, fallback FROM relay.staged WHERE xid = me
                  ORDER BY id) s;
            DELETE FROM relay.staged WHERE xid = me;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'relay: unnumbered fallback failed too (%); messages dropped', SQLERRM;
        END;
    END;
    RETURN NULL;
END
$fn$;

------------------------------------------------------------------------------------------------
-- The history's identity (docs/architecture.md "Epoch").
------------------------------------------------------------------------------------------------

-- What identifies the history this database holds: it changes with a restore into another
-- cluster or database, a point-in-time recovery or failover, a Neon branch.
CREATE OR REPLACE FUNCTION relay._fingerprint(
    OUT system_identifier bigint, OUT timeline integer, OUT database_oid oid,
    OUT neon_timeline text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    BEGIN
        SELECT c.system_identifier INTO system_identifier FROM pg_control_system() c;
    EXCEPTION WHEN insufficient_privilege THEN
        system_identifier := NULL;  -- unknown: never compared
    END;
    -- The insert timeline, which changes at promotion at once (pg_control_checkpoint()'s
    -- timeline only after the next checkpoint).
    BEGIN
        timeline := ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::integer;
    EXCEPTION WHEN OTHERS THEN
        timeline := NULL;
    END;
    SELECT d.oid INTO database_oid FROM pg_database d WHERE d.datname = current_database();
    neon_timeline := nullif(current_setting('neon.timeline_id', true), '');
END
$fn$;

CREATE OR REPLACE FUNCTION relay._new_epoch_id() RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT substr(replace(gen_random_uuid()::text, '-', ''), 1, 12)
$$;

-- Start a new epoch (every cursor becomes unresumable) and tell every listener (kind e).
-- A listener calls it when it finds the history rewound under it (design: "per listener").
CREATE OR REPLACE FUNCTION relay.new_epoch(p_reason text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    fp record := relay._fingerprint();
    e text := relay._new_epoch_id();
BEGIN
    UPDATE relay.meta SET epoch = e, epoch_started_at = now(),
        epoch_reason = coalesce(p_reason, 'relay.new_epoch()'),
        system_identifier = fp.system_identifier, timeline = fp.timeline,
        database_oid = fp.database_oid, neon_timeline = fp.neon_timeline;
    PERFORM pg_catalog.pg_notify(relay._cfg_channel(), 'r1 e 0 0 00000000 0  ' || e);
    RETURN e;
END
$fn$;

-- A relay listener's sign of life: writers stop keeping messages after dormant_after without
-- one (nothing grows for ever when no relay runs).
CREATE OR REPLACE FUNCTION relay.beat() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.setval('relay.heartbeat'::regclass,
                             extract(epoch FROM clock_timestamp())::bigint)
$$;

------------------------------------------------------------------------------------------------
-- Listeners of two versions. Main's listener before the durable history (version 1) drops
-- numbered frames (kinds m, r, s) as unknown: while one is connected, writers keep version 1's
-- behaviour (kind n at publish), whatever the outbox setting says. That makes the order of a
-- deploy free: SQL first (Fly's release_command), relays first, or relays rolled back.
------------------------------------------------------------------------------------------------

-- Remember which version's frames the calling backend understands.
CREATE OR REPLACE FUNCTION relay._register(p_speaks integer) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO relay.listeners (pid, backend_start, speaks, hello_at)
    SELECT pg_backend_pid(), a.backend_start, p_speaks, now()
    FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_backend_pid()
    ON CONFLICT (pid) DO UPDATE
        SET backend_start = excluded.backend_start, speaks = excluded.speaks,
            hello_at = excluded.hello_at
$$;

-- Why the outbox must be held off now, or NULL: a version 1 listener is alive, or no durable
-- listener has ever said hello. Forgets the listeners whose backend is gone.
CREATE OR REPLACE FUNCTION relay._hold_reason() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    old1 text;
    reason text;
BEGIN
    DELETE FROM relay.listeners l
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                      WHERE a.pid = l.pid AND a.datname = current_database()
                        AND (a.backend_start IS NULL OR l.backend_start IS NULL
                             OR a.backend_start = l.backend_start));
    SELECT string_agg(pid::text, ', ' ORDER BY pid) INTO old1
    FROM relay.listeners WHERE speaks < 2;
    IF old1 IS NOT NULL THEN
        reason := 'relay listeners of version 1 are connected (backend pid ' || old1
                  || '): writers send version 1''s frames until they are gone';
    ELSIF (SELECT durable_since IS NULL FROM relay.meta) THEN
        -- A fresh install, or an upgrade from version 1: until a listener that keeps the
        -- durable history has said hello(2), keeping messages would only fill the outbox for
        -- nobody (no such listener reads it, none cleans it). A listener starting for the first
        -- time begins at the head anyway: no message kept before it could be asked for.
        reason := 'no relay listener of version 2 has connected yet: writers send version 1''s '
                  || 'frames until one says relay.hello(2)';
    END IF;
    RETURN reason;
END
$fn$;

-- Hold the outbox off while relay._hold_reason() says so, release it when not; on a change,
-- recompile the writers' setting and announce it (kind c, body 'outbox', pos: the last
-- position handed out before the change). The caller holds advisory lock 3.
CREATE OR REPLACE FUNCTION relay._review_hold() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    reason text := relay._hold_reason();
    held text;
    saved text;
BEGIN
    SELECT outbox_held INTO held FROM relay.meta;
    IF (reason IS NULL) <> (held IS NULL) THEN
        UPDATE relay.meta SET outbox_held = reason;
        PERFORM relay._compile();
        -- Either way, the commits that took the commit lock before us finish first (COMMIT
        -- decides there whether a transaction's staged messages are numbered); those after us
        -- see the new setting. So in the NOTIFY stream every frame of the old state comes
        -- before this announcement and every frame of the new one after it: a listener
        -- switches there, and on a release follows the outbox from the position it carries.
        saved := current_setting('lock_timeout');
        BEGIN
            PERFORM set_config('lock_timeout', '2s', true);
            PERFORM pg_catalog.pg_advisory_xact_lock(1919249505, 1);
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- a transaction holds it for long (SET CONSTRAINTS): do not wait with it
        END;
        PERFORM set_config('lock_timeout', saved, true);
        PERFORM pg_catalog.pg_notify(relay._cfg_channel(), 'r1 c '
            || coalesce(pg_catalog.pg_sequence_last_value('relay.pos'::regclass), 0)
            || ' 0 00000000 0  outbox');
    ELSIF reason IS DISTINCT FROM held THEN
        UPDATE relay.meta SET outbox_held = reason;  -- other pids, same state
    END IF;
    RETURN reason;
END
$fn$;

-- What a listener calls on every (re)connect, after LISTEN, and on kinds c and i. p_speaks:
-- the highest relay SQL version whose frames it understands (2: the durable history).
-- Refuses a replica; checks the fingerprint (and the heartbeat) and starts a new epoch when
-- the history may have diverged; records a heartbeat; returns what the listener needs as one
-- JSON object.
CREATE OR REPLACE FUNCTION relay.hello(p_speaks integer) RETURNS json
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    m relay.meta;
    fp record;
    reason text;
    silent bigint;
    was_held boolean;
    released_at bigint;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'relay: this server is a replica (in recovery): NOTIFY is not delivered here and nothing can be written; connect to the primary'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(1919249505, 3);  -- one hello at a time decides
    PERFORM relay._register(coalesce(p_speaks, 1));
    IF p_speaks >= 2 THEN
        UPDATE relay.meta SET durable_since = now() WHERE durable_since IS NULL;
    END IF;
    was_held := (SELECT outbox_held IS NOT NULL FROM relay.meta);
    IF relay._review_hold() IS NULL AND was_held THEN
        -- This call released the hold: its announcement (kind c, at this position) reaches
        -- the caller after kind n frames of commits that came before it (answered with this).
        released_at := coalesce(pg_catalog.pg_sequence_last_value('relay.pos'::regclass), 0);
    END IF;
    IF coalesce(p_speaks, 1) < 2 THEN
        -- Version 1's answer, for main's listener before the durable history.
        RETURN json_build_object(
            'protocol', (SELECT protocol FROM relay.meta),
            'version', (SELECT version FROM relay.meta),
            'outbox', false,
            'notifyChannel', relay._cfg_channel(),
            'legacyNotify', relay._cfg_legacy());
    END IF;

    SELECT * INTO m FROM relay.meta FOR UPDATE;
    fp := relay._fingerprint();
    silent := extract(epoch FROM clock_timestamp())::bigint
              - pg_catalog.pg_sequence_last_value('relay.heartbeat'::regclass);
    IF m.system_identifier IS NOT NULL AND fp.system_identifier IS NOT NULL
       AND m.system_identifier <> fp.system_identifier THEN
        reason := 'system identifier changed: restored or copied into another cluster';
    ELSIF m.database_oid IS DISTINCT FROM fp.database_oid THEN
        reason := 'database oid changed: dumped and restored, or copied into another database';
    ELSIF m.timeline IS DISTINCT FROM fp.timeline AND fp.timeline IS NOT NULL THEN
        reason := 'timeline changed: point-in-time recovery or failover';
    ELSIF m.neon_timeline IS DISTINCT FROM fp.neon_timeline THEN
        reason := 'Neon timeline changed: a branch or a restore';
    ELSIF silent > relay._cfg_dormant_after() THEN
        reason := 'no relay for longer than dormant_after: messages were not kept';
    END IF;
    IF reason IS NOT NULL THEN
        PERFORM relay.new_epoch(reason);
        SELECT * INTO m FROM relay.meta;
    END IF;
    PERFORM relay.beat();
    RETURN json_build_object(
        'protocol', m.protocol,
        'version', m.version,
        'epoch', m.epoch,
        'epochStartedAt', m.epoch_started_at,
        'epochReason', m.epoch_reason,
        'rotated', reason,
        'outbox', relay._cfg_outbox(),
        'outboxSetting', (SELECT value FROM relay.settings WHERE name = 'outbox'),
        'outboxHeld', m.outbox_held,
        -- Set when this very call released the hold: switch at its kind c frame (above).
        'releasedAt', released_at,
        'notifyChannel', relay._cfg_channel(),
        'legacyNotify', relay._cfg_legacy(),
        'retentionSeconds', (SELECT extract(epoch FROM value::interval)::bigint
                             FROM relay.settings WHERE name = 'retention'),
        'dormantAfterSeconds', relay._cfg_dormant_after(),
        -- where a fresh listener starts: the newest visible row (not the sequence, which may be
        -- ahead by positions of transactions still committing)
        'headPos', (SELECT max(pos) FROM relay.outbox),
        -- the highest position ever handed out: survives cleanup, goes back after a restore
        'issuedPos', pg_catalog.pg_sequence_last_value('relay.pos'::regclass),
        'deletedUpto', m.deleted_upto);
END
$fn$;

-- Version 1's handshake, kept for main's listener before the durable history (it calls it on
-- every connect and on kinds c and i): while such a listener is connected, the outbox is held.
CREATE OR REPLACE FUNCTION relay.hello() RETURNS json
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT relay.hello(1)
$$;

------------------------------------------------------------------------------------------------
-- Reading, for listeners.
------------------------------------------------------------------------------------------------

-- Catch-up and gap fill: everything after a position, in commit order.
CREATE OR REPLACE FUNCTION relay.read_from(p_after bigint, p_limit integer)
RETURNS TABLE (pos bigint, channel text, seq bigint, tag integer, payload text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.pos, o.channel, o.seq, o.tag, o.payload::text FROM relay.outbox o
    WHERE o.pos > p_after ORDER BY o.pos LIMIT p_limit
$$;

-- Resume of one channel: the rows from a seq on (the first row proves the cursor).
CREATE OR REPLACE FUNCTION relay.read_channel(p_channel text, p_from_seq bigint, p_limit integer)
RETURNS TABLE (pos bigint, seq bigint, tag integer, payload text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.pos, o.seq, o.tag, o.payload::text FROM relay.outbox o
    WHERE o.channel = p_channel AND o.seq >= p_from_seq ORDER BY o.seq LIMIT p_limit
$$;

-- Heads of many channels in one round trip (a reconnect storm resumes thousands at once).
CREATE OR REPLACE FUNCTION relay.heads(p_channels text[])
RETURNS TABLE (channel text, seq bigint, tag integer, pos bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.channel, h.seq, h.tag, h.pos
    FROM (SELECT DISTINCT unnest(p_channels)) AS p(channel)
    CROSS JOIN LATERAL (
        -- The newest outbox row, else the head relay.cleanup saved when the last row expired.
        (SELECT o.seq, o.tag, o.pos FROM relay.outbox o WHERE o.channel = p.channel
         ORDER BY o.seq DESC LIMIT 1)
        UNION ALL
        (SELECT c.seq, c.tag, c.pos FROM relay.channel c WHERE c.channel = p.channel)
        LIMIT 1) h
$$;

------------------------------------------------------------------------------------------------
-- Cleanup: one instance at a time, bounded, never waiting for a writer nor making one wait.
-- A listener calls it every few seconds on a connection of its own (a batch costs ~10-20 ms).
-- Returns the outbox rows deleted, or -1 when another session is cleaning.
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION relay.cleanup(p_max_rows integer DEFAULT 2000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    done_upto bigint;
    cutoff timestamptz;
    deleted integer;
    upto bigint;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock(1919249505, 2) THEN
        RETURN -1;
    END IF;
    PERFORM relay.beat();
    -- A held outbox is released here once the last version 1 listener is gone (never waiting
    -- for an install or a hello that is deciding the same).
    IF (SELECT outbox_held IS NOT NULL FROM relay.meta)
       AND pg_catalog.pg_try_advisory_xact_lock(1919249505, 3) THEN
        PERFORM relay._review_hold();
    END IF;
    SELECT now() - value::interval INTO cutoff FROM relay.settings WHERE name = 'retention';
    SELECT deleted_upto INTO done_upto FROM relay.meta;
    -- Oldest first, starting after what was already deleted (skips the dead index entries a
    -- queue table keeps at its left end until vacuum). created_at is clock_timestamp() under the
    -- commit lock, so it grows with pos: stop at the first row young enough. Every row before
    -- that one is old, so the batch is a range of positions: find its end first, then delete
    -- the range by the primary key (a join with the list of victims could be planned as a
    -- hash of them over a scan of the whole outbox).
    SELECT max(v.pos) INTO upto FROM (
        SELECT o.pos FROM relay.outbox o
        WHERE o.pos > done_upto AND o.created_at < cutoff
          AND o.pos < coalesce((SELECT min(y.pos) FROM relay.outbox y
                                WHERE y.pos > done_upto AND y.created_at >= cutoff),
                               9223372036854775807)
        ORDER BY o.pos LIMIT p_max_rows) v;
    IF upto IS NULL THEN
        upto := done_upto;  -- nothing old enough: the DELETE below finds an empty range
    END IF;
    WITH d AS (
        DELETE FROM relay.outbox o WHERE o.pos > done_upto AND o.pos <= upto
        RETURNING o.pos, o.channel, o.seq, o.tag, o.created_at
    ), heads AS (
        -- Writers read a channel's last seq from its newest outbox row: when that row goes,
        -- its channel's head is kept here (a channel's seq never starts again at 1). The
        -- snapshot is the one before this DELETE: a row with a higher seq, if any, stays.
        INSERT INTO relay.channel AS ch (channel, seq, tag, pos, updated_at)
        SELECT DISTINCT ON (d.channel) d.channel, d.seq, d.tag, d.pos, d.created_at
        FROM d
        WHERE NOT EXISTS (SELECT 1 FROM relay.outbox o
                          WHERE o.channel = d.channel AND o.seq > d.seq)
        ORDER BY d.channel, d.seq DESC
        ON CONFLICT (channel) DO UPDATE
            SET seq = excluded.seq, tag = excluded.tag, pos = excluded.pos,
                updated_at = excluded.updated_at
            WHERE ch.seq < excluded.seq
    )
    SELECT count(*), max(pos) INTO deleted, upto FROM d;
    IF upto IS NOT NULL THEN
        UPDATE relay.meta SET deleted_upto = upto;
    END IF;
    -- Unnumbered rows whose transaction left no commit record (its trigger never ran: a
    -- crash in between, or the trigger disabled): nobody will ever number them.
    DELETE FROM relay.unsettled u
    WHERE u.created_at < cutoff
      AND pg_xact_status(u.xid) IS DISTINCT FROM 'in progress'
      AND NOT EXISTS (SELECT 1 FROM relay.commits c WHERE c.xid = u.xid);
    -- Staged rows are visible only once their transaction committed, and a committing
    -- transaction takes its own out: what is visible here was left by a COMMIT whose trigger
    -- did not run (it was dropped or disabled meanwhile). Looking for them reads every dead
    -- row of the table (each publishing transaction leaves one until vacuum: 50-80 ms a call
    -- at 300,000), so look only when the statistics count rows that stayed: a transaction's
    -- insert and its commit's delete cancel out there, a left-over row does not. (Without
    -- track_counts there are no statistics: look every time.)
    IF (SELECT n_live_tup > 0 FROM pg_catalog.pg_stat_user_tables
        WHERE relid = 'relay.staged'::regclass)
       OR NOT current_setting('track_counts')::boolean THEN
        DELETE FROM relay.staged s
        WHERE s.id = ANY (ARRAY(SELECT id FROM relay.staged LIMIT p_max_rows));
    END IF;
    RETURN deleted;
END
$fn$;

------------------------------------------------------------------------------------------------
-- App-facing entry points, in schema public (an app's triggers and migrations name them).
------------------------------------------------------------------------------------------------

-- The one way to publish: relay_publish('user_Subscription_42', json_build_object(...)).
CREATE OR REPLACE FUNCTION public.relay_publish(channel text, payload json) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM relay._publish(channel, payload, NULL);
END
$fn$;

-- One owner's notification from relay_notify(). Kept as a function of its own: sessions that
-- were open across an upgrade may hold a cached plan of an older relay_notify calling it.
--   payload:   {"table", "operation", "row", ["reassigned": true,] "ts"}
--   reference: {"table", "operation", "id", "truncated": true, ["reassigned": true,] "ts"},
--              sent instead when the payload does not fit one NOTIFY
-- "ts" comes from clock_timestamp(), so two writes of a row in one transaction never make
-- identical payloads.
CREATE OR REPLACE FUNCTION public.relay_notify_owner(
    channel_table text, owner_id text, table_name text, operation text, row_data json,
    id_column text, reassigned boolean
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    channel text := 'user_' || channel_table || '_' || owner_id;
    sent_at numeric := extract(epoch FROM clock_timestamp());
    payload json;
    reference json;
BEGIN
    -- relay/channels.py's TABLE_PART: the part is read back up to the first _ after user_,
    -- and user ids may hold _: with 'Subscription_Invoice', user 42's rows would go to
    -- user_Subscription_Invoice_42, the channel of user Invoice_42.
    IF channel_table IS NULL OR channel_table !~ '^[A-Za-z][A-Za-z0-9]*$' THEN
        RAISE WARNING 'relay_notify: channel table part % is not letters and digits (an _ of its own would make user_%_<id> another user''s channel); not notified',
            quote_literal(left(channel_table, 40)), left(channel_table, 40);
        RETURN;
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE WARNING 'relay_notify: channel for user % of table % would exceed 63 bytes; not notified',
            left(owner_id, 40), table_name;
        RETURN;
    END IF;
    IF reassigned THEN
        payload := json_build_object('table', table_name, 'operation', operation,
                                     'row', row_data, 'reassigned', true, 'ts', sent_at);
        reference := json_build_object('table', table_name, 'operation', operation,
                                       'id', row_data -> id_column, 'truncated', true,
                                       'reassigned', true, 'ts', sent_at);
    ELSE
        payload := json_build_object('table', table_name, 'operation', operation,
                                     'row', row_data, 'ts', sent_at);
        reference := json_build_object('table', table_name, 'operation', operation,
                                       'id', row_data -> id_column, 'truncated', true,
                                       'ts', sent_at);
    END IF;
    PERFORM relay._publish(channel, payload, reference);
END
$fn$;

-- relay_notify(): the row trigger that turns a write into a notification of the row's owner.
--
-- Install as (`python -m relay db trigger` writes this with the right quoting):
--   CREATE OR REPLACE TRIGGER relay_notify AFTER INSERT OR UPDATE OR DELETE ON <table>
--       FOR EACH ROW EXECUTE FUNCTION relay_notify('<Table>' [, '<user column>'
--                                                  [, '<id column>' [, '<column>', ...]]]);
--
--   TG_ARGV[0]  channel table part, case preserved: 'Subscription' -> user_Subscription_<user>;
--               letters and digits, starting with a letter (any other is refused with a
--               WARNING when it fires: an _ of its own would make a name another user's)
--   TG_ARGV[1]  column holding the owner's user id (default 'user_id')
--   TG_ARGV[2]  column identifying the row in a reference payload (default 'id')
--   TG_ARGV[3…] the columns the payload's "row" carries (the id column always comes along).
--               Without them the row is sent WHOLE: every column, whatever it holds, goes to
--               the owner's browser. Name the columns to keep secrets in the database.
--
-- An UPDATE that moves a row to another user notifies both: the new owner gets the UPDATE
-- with the new row; the old owner {"operation": "DELETE", "row": <old row>, "reassigned":
-- true, ...}: the row left their view, and the new owner's data must not reach them.
-- Nothing here fails the writer's transaction: a channel over 63 bytes, a table part that is
-- not letters and digits, or a missing user column, is skipped with a WARNING.
CREATE OR REPLACE FUNCTION public.relay_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    channel_table text := TG_ARGV[0];
    user_column text := coalesce(TG_ARGV[1], 'user_id');
    id_column text := coalesce(TG_ARGV[2], 'id');
    table_name text := lower(TG_TABLE_NAME);
    sent_columns text[];
    new_row json;
    old_row json;
    new_owner text;
    old_owner text;
BEGIN
    IF channel_table IS NULL OR channel_table = '' THEN
        RAISE WARNING 'relay_notify on %: missing the channel table argument; not notified',
            TG_TABLE_NAME;
        RETURN NULL;
    END IF;

    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := row_to_json(NEW);
        new_owner := new_row ->> user_column;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := row_to_json(OLD);
        old_owner := old_row ->> user_column;
    END IF;

    -- A NULL owner is a row nobody should hear about; a missing column is a mistake in the
    -- trigger definition, worth a warning. (Checked only on the NULL path: it costs a jsonb.)
    IF new_owner IS NULL AND old_owner IS NULL
            AND NOT (coalesce(new_row, old_row)::jsonb ? user_column) THEN
        RAISE WARNING 'relay_notify on %: no column %; not notified', TG_TABLE_NAME, user_column;
        RETURN NULL;
    END IF;

    -- Only the listed columns (and the id column) leave the database. The owners were read
    -- from the whole row above, so the user column need not be listed.
    IF TG_NARGS > 3 THEN
        sent_columns := TG_ARGV[3:TG_NARGS - 1] || id_column;
        IF new_row IS NOT NULL THEN
            new_row := (SELECT coalesce(json_object_agg(key, value), '{}'::json)
                        FROM json_each(new_row) WHERE key = ANY (sent_columns));
        END IF;
        IF old_row IS NOT NULL THEN
            old_row := (SELECT coalesce(json_object_agg(key, value), '{}'::json)
                        FROM json_each(old_row) WHERE key = ANY (sent_columns));
        END IF;
    END IF;

    IF TG_OP = 'DELETE' THEN
        IF old_owner IS NOT NULL THEN
            PERFORM public.relay_notify_owner(channel_table, old_owner, table_name, TG_OP,
                                              old_row, id_column, false);
        END IF;
        RETURN NULL;
    END IF;

    IF TG_OP = 'UPDATE' AND old_owner IS DISTINCT FROM new_owner AND old_owner IS NOT NULL THEN
        PERFORM public.relay_notify_owner(channel_table, old_owner, table_name, 'DELETE',
                                          old_row, id_column, true);
    END IF;
    IF new_owner IS NOT NULL THEN
        PERFORM public.relay_notify_owner(channel_table, new_owner, table_name, TG_OP,
                                          new_row, id_column, false);
    END IF;
    RETURN NULL;  -- AFTER trigger: the return value is ignored
END
$fn$;
