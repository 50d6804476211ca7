// The app's own database access: one small pg pool per server process. The app may use the
// pooled URL (Vercel's Neon integration puts it in DATABASE_URL); only relay needs a direct one.
import { Pool } from 'pg';

export type Subscription = {
  id: string;
  userId: string;
  plan: string;
  status: string;
  updatedAt: string;
};

const globalForPool = globalThis as typeof globalThis & { relayExamplePool?: Pool };

export function db(): Pool {
  if (!globalForPool.relayExamplePool) {
    if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set');
    globalForPool.relayExamplePool = new Pool({ connectionString: process.env.DATABASE_URL, max: 3 });
  }
  return globalForPool.relayExamplePool;
}

export async function subscriptionOf(userId: string): Promise<Subscription | null> {
  const { rows } = await db().query(
    `SELECT "id", "userId", "plan", "status", "updatedAt" FROM "Subscription" WHERE "userId" = $1`,
    [userId],
  );
  if (rows.length === 0) return null;
  return { ...rows[0], updatedAt: new Date(rows[0].updatedAt).toISOString() };
}
