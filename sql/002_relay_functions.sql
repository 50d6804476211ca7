-- relay's database side, part 2 of 3: the functions (all CREATE OR REPLACE).
--
-- Every function pins search_path to pg_catalog, pg_temp (pg_temp last: a temporary table can
-- never shadow one of relay's, and functions and operators are never looked up in pg_temp)
-- and names every relay object with its schema: a role that can create objects earlier in a
-- writer's search_path cannot make relay's trigger run its code. Writer-side functions are
-- SECURITY DEFINER: an app's role needs no privilege on schema relay.
--
-- PostgreSQL has no permissions on NOTIFY and LISTEN: any role that can connect to this
-- database can LISTEN to relay's channel (and read every message) or NOTIFY it (and forge
-- one). The database is relay's trust boundary (docs/security.md).

------------------------------------------------------------------------------------------------
-- Writer-side configuration, compiled from relay.settings by relay._compile(). IMMUTABLE
-- constant functions: PL/pgSQL folds them into its cached plans, so reading them costs nothing
-- per call, and replacing them invalidates those plans in every session at once.
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION relay._cfg_channel() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT 'relay'::text $$;
CREATE OR REPLACE FUNCTION relay._cfg_legacy() RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT false $$;

CREATE OR REPLACE FUNCTION relay._compile() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s record;
BEGIN
    SELECT
        max(value) FILTER (WHERE name = 'notify_channel') AS channel,
        max(value) FILTER (WHERE name = 'legacy_notify') AS legacy
    INTO s FROM relay.settings;
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_channel() RETURNS text LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::text $c$',
                   s.channel);
    EXECUTE format('CREATE OR REPLACE FUNCTION relay._cfg_legacy() RETURNS boolean LANGUAGE sql '
                   'IMMUTABLE SET search_path = pg_catalog, pg_temp AS $c$ SELECT %L::boolean $c$',
                   s.legacy::boolean);
END
$fn$;

-- Change a setting: validated, stored, compiled into the writer side, announced to listeners
-- (kind c, on the channel they LISTEN to now).
CREATE OR REPLACE FUNCTION relay.set(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    old_channel text := relay._cfg_channel();
BEGIN
    CASE p_name
        WHEN 'legacy_notify' THEN
            PERFORM p_value::boolean;
        WHEN 'notify_channel' THEN
            IF p_value IS NULL OR p_value = '' OR octet_length(p_value) > 63 THEN
                RAISE EXCEPTION 'relay.set: notify_channel must be 1..63 bytes';
            END IF;
        ELSE
            RAISE EXCEPTION 'relay.set: unknown setting %', p_name;
    END CASE;
    UPDATE relay.settings SET value = p_value WHERE name = p_name;
    PERFORM relay._compile();
    PERFORM pg_catalog.pg_notify(old_channel, 'r1 c 0 0 00000000 0  ' || p_name);
END
$fn$;

------------------------------------------------------------------------------------------------
-- Publishing. One NOTIFY per message on the shared channel, in the r1 wire format:
--
--   r1 <kind> <pos> <seq> <tag> <chlen> <channel> <body>
--
-- single spaces; <chlen> is the channel's length in characters (code points), so the channel
-- may hold spaces or quotes; <body> is everything after the space that follows the channel.
-- The listener routes on that prefix without parsing the JSON. Kinds sent by this version:
--   n  a message without a database number (the listener numbers it in memory): pos and seq
--      0, a random tag (NOTIFY collapses identical payloads of one transaction: the tag keeps
--      two identical messages two)
--   i  relay's SQL was installed (body: the version): RELAY_USER_CHANNELS=auto switches
--   c  a setting changed (body: its name)
-- Anything else is a newer SQL's; the listener counts and drops what it does not speak.
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
-- NOTIFY (relay_notify passes a reference to the row).
CREATE OR REPLACE FUNCTION relay._publish(p_channel text, p_payload json, p_fallback json)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
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

    -- DURABLE HISTORY SEAM (issue 13): with the outbox, the message is staged here (numbered
    -- at commit, kinds m/r/s); kind n stays for outbox off, read-only transactions and the
    -- fallback when numbering fails. The frame and the listener's routing do not change.
    PERFORM relay._notify_unnumbered(p_channel, p_payload::text, p_fallback::text);
END
$fn$;

-- The listener's handshake, on every (re)connect: what this database speaks, as one JSON
-- object. Refuses a replica (LISTEN is not possible there and nothing can be written).
-- DURABLE HISTORY SEAM (issue 13): the epoch, its fingerprint and the outbox's head go here.
CREATE OR REPLACE FUNCTION relay.hello() RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    m relay.meta;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'relay: this server is a replica (in recovery): NOTIFY is not delivered here; connect to the primary'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    SELECT * INTO m FROM relay.meta;
    RETURN json_build_object(
        'protocol', m.protocol,
        'version', m.version,
        'outbox', false,
        'notifyChannel', relay._cfg_channel(),
        'legacyNotify', relay._cfg_legacy());
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
