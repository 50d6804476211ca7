-- The example app's table, named as Prisma would name it (model Subscription): a quoted,
-- case-sensitive table "Subscription" with camelCase columns. "stripeCustomerId" stands for
-- the columns a browser must never see; the trigger (002) does not send it.
CREATE TABLE IF NOT EXISTS "Subscription" (
    "id" text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    "userId" text NOT NULL UNIQUE,
    "plan" text NOT NULL DEFAULT 'free',
    "status" text NOT NULL DEFAULT 'active',
    "stripeCustomerId" text,
    "updatedAt" timestamptz NOT NULL DEFAULT now()
);
