-- relay_notify(): the row trigger that turns a write into a per-user notification for relay.
--
-- Install as
--   CREATE OR REPLACE TRIGGER <name> AFTER INSERT OR UPDATE OR DELETE ON <table>
--       FOR EACH ROW EXECUTE FUNCTION relay_notify('<Table>' [, '<user column>' [, '<id column>'
--                                                   [, '<column>', ...]]]);
-- (`python -m relay db trigger` writes this statement with the right quoting.)
--
--   TG_ARGV[0]  channel table part, case preserved: 'Subscription' -> user_Subscription_<user>
--   TG_ARGV[1]  column holding the owner's user id (default 'user_id')
--   TG_ARGV[2]  column identifying the row in a truncated payload (default 'id')
--   TG_ARGV[3…] the columns the payload's "row" carries (the id column always comes along).
--               Without them the row is sent WHOLE - every column, whatever it holds, goes to
--               the owner's browser; name the columns to keep secrets in the database.
--
-- Payload (JSON text):
--   {"table": "<table, lowercased>", "operation": "INSERT|UPDATE|DELETE",
--    "row": {...NEW, or OLD for DELETE, or only their listed columns...},
--    "ts": <commit-side clock, epoch seconds>}
-- A payload of 8000 bytes or more (NOTIFY's limit, which would otherwise fail the writer's
-- transaction) is replaced by a reference the client fetches from the app:
--   {"table": ..., "operation": ..., "id": <id column>, "truncated": true, "ts": ...}
--
-- An UPDATE that moves a row to another user notifies both: the new owner gets the UPDATE
-- with the new row; the old owner gets {"operation": "DELETE", "row": <old row>,
-- "reassigned": true, ...} - the row left their view, and the new owner's data must not
-- reach them.
--
-- Nothing here may fail the writer's transaction: a channel longer than PostgreSQL's 63-byte
-- identifier limit, or a missing user column, is skipped with a WARNING.
-- "ts" comes from clock_timestamp(), so two writes of the same row in one transaction do not
-- produce identical payloads, which NOTIFY would collapse into one.

CREATE OR REPLACE FUNCTION relay_notify_owner(
    channel_table text,
    owner_id text,
    table_name text,
    operation text,
    row_data json,
    id_column text,
    reassigned boolean
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    channel text := 'user_' || channel_table || '_' || owner_id;
    sent_at numeric := extract(epoch FROM clock_timestamp());
    payload text;
BEGIN
    IF octet_length(channel) > 63 THEN
        RAISE WARNING 'relay_notify: channel for user % of table % would exceed 63 bytes; not notified',
            left(owner_id, 40), table_name;
        RETURN;
    END IF;

    IF reassigned THEN
        payload := json_build_object('table', table_name, 'operation', operation,
                                     'row', row_data, 'reassigned', true, 'ts', sent_at)::text;
    ELSE
        payload := json_build_object('table', table_name, 'operation', operation,
                                     'row', row_data, 'ts', sent_at)::text;
    END IF;

    IF octet_length(payload) >= 8000 THEN
        IF reassigned THEN
            payload := json_build_object('table', table_name, 'operation', operation,
                                         'id', row_data -> id_column, 'truncated', true,
                                         'reassigned', true, 'ts', sent_at)::text;
        ELSE
            payload := json_build_object('table', table_name, 'operation', operation,
                                         'id', row_data -> id_column, 'truncated', true,
                                         'ts', sent_at)::text;
        END IF;
        IF octet_length(payload) >= 8000 THEN  -- only with an absurdly large id value
            RAISE WARNING 'relay_notify: even the reference to a % row is too large; not notified',
                table_name;
            RETURN;
        END IF;
    END IF;

    PERFORM pg_notify(channel, payload);
END;
$$;

CREATE OR REPLACE FUNCTION relay_notify() RETURNS trigger
LANGUAGE plpgsql
AS $$
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
            PERFORM relay_notify_owner(channel_table, old_owner, table_name, TG_OP, old_row,
                                       id_column, false);
        END IF;
        RETURN NULL;
    END IF;

    IF TG_OP = 'UPDATE' AND old_owner IS DISTINCT FROM new_owner AND old_owner IS NOT NULL THEN
        PERFORM relay_notify_owner(channel_table, old_owner, table_name, 'DELETE', old_row,
                                   id_column, true);
    END IF;
    IF new_owner IS NOT NULL THEN
        PERFORM relay_notify_owner(channel_table, new_owner, table_name, TG_OP, new_row,
                                   id_column, false);
    END IF;
    RETURN NULL;  -- AFTER trigger: the return value is ignored
END;
$$;
