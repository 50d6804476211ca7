-- Example tables the relay's default channels follow: user_Subscription_<user> and
-- user_Usage_<user>. Safe to run again: nothing is dropped except the trigger it recreates.

CREATE TABLE IF NOT EXISTS subscription (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    plan text,
    status text,
    notes text,  -- free text; also how tests make a row too large for one NOTIFY
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscription_user_id_idx ON subscription (user_id);

CREATE OR REPLACE TRIGGER subscription_relay_notify
    AFTER INSERT OR UPDATE OR DELETE ON subscription
    FOR EACH ROW EXECUTE FUNCTION relay_notify('Subscription');

CREATE TABLE IF NOT EXISTS usage (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    metric text,
    amount bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS usage_user_id_idx ON usage (user_id);

CREATE OR REPLACE TRIGGER usage_relay_notify
    AFTER INSERT OR UPDATE OR DELETE ON usage
    FOR EACH ROW EXECUTE FUNCTION relay_notify('Usage');
