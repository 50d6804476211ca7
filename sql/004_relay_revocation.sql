-- relay's database side, part 4: revoking a user's tokens (issue 14, item 11).
--
-- relay_revoke('42') (or `python -m relay kick --user-id 42`) records that user 42's tokens
-- issued before now are void, and announces it on relay's shared channel (kind k): every
-- relay's listener hears it at once, every worker closes that user's connections whose token
-- was issued before that moment (close 4001, "token revoked"), and from then on refuses those
-- tokens, including in a refresh. The record is what a relay that starts (or reconnects)
-- later reads, so every instance agrees for the tokens' remaining lifetime. Tokens issued
-- after it (the user signed in again) are accepted: the app decides whether to issue them.
--
-- Times: the record is clock_timestamp() of the database; a token's iat comes from the app's
-- clock, in whole seconds. A token is void when its iat is before the revocation: one issued
-- in the same second as the revocation counts as before it (void) - the safe side; its client
-- asks the app for a new token and gets in a second later.
--
-- Records older than 30 days are removed by each call: a token living longer than that
-- (RELAY_MAX_TOKEN_LIFETIME over 30 days, or 0) can outlive its revocation.

CREATE TABLE IF NOT EXISTS relay.revocations (
    user_id text PRIMARY KEY,
    revoked_at timestamptz NOT NULL
);
REVOKE ALL ON TABLE relay.revocations FROM PUBLIC;

-- The announcement, r1 kind k: the frame's channel is the user id, its body the time in epoch
-- seconds. In schema relay, like every NOTIFY of relay's own (apps call the public entry).
CREATE OR REPLACE FUNCTION relay._announce_revocation(p_user text, p_at timestamptz)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT pg_catalog.pg_notify(
        relay._cfg_channel(),
        'r1 k 0 0 ' || lpad(to_hex((random() * 2147483646)::integer), 8, '0') || ' '
        || length(p_user) || ' ' || p_user || ' ' || extract(epoch FROM p_at)::text)
$fn$;
REVOKE ALL ON FUNCTION relay._announce_revocation(text, timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION public.relay_revoke(revoked_user text) RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    revoked timestamptz := clock_timestamp();
BEGIN
    -- An explicit call, not a trigger: failing loudly is right here.
    IF revoked_user IS NULL OR revoked_user = '' OR octet_length(revoked_user) > 255
            OR revoked_user ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'relay_revoke: a user id of 1 to 255 bytes without control characters, got %',
            quote_nullable(left(revoked_user, 80));
    END IF;
    INSERT INTO relay.revocations AS r (user_id, revoked_at) VALUES (revoked_user, revoked)
        ON CONFLICT (user_id) DO UPDATE SET revoked_at = greatest(r.revoked_at, excluded.revoked_at)
        RETURNING r.revoked_at INTO revoked;
    DELETE FROM relay.revocations r WHERE r.revoked_at < revoked - interval '30 days';
    PERFORM relay._announce_revocation(revoked_user, revoked);
    RETURN revoked;
END
$fn$;

-- Like relay_publish: whoever can NOTIFY relay's channel can already close a user's
-- connections, so the database stays the trust boundary (docs/security.md).
REVOKE ALL ON FUNCTION public.relay_revoke(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.relay_revoke(text) TO PUBLIC;
