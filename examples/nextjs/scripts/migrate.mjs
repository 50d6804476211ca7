// npm run db:migrate — applies db/migrations/*.sql in name order to DATABASE_URL.
// A stand-in for the app's migration tool (Prisma, Drizzle…): each file is idempotent, so
// running it again is harmless. relay's own functions (relay_notify) must be installed
// first: `make run` does it for its database, `python -m relay db install` for any other.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';

const root = join(import.meta.dirname, '..');
const dir = join(root, 'db', 'migrations');
// Like `next dev`, read .env.development.local when there is one (the environment wins).
const envFile = join(root, '.env.development.local');
if (existsSync(envFile)) process.loadEnvFile(envFile);
if (!process.env.DATABASE_URL) {
  console.error('db:migrate: DATABASE_URL is not set');
  process.exit(2);
}
const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
try {
  for (const name of readdirSync(dir).filter((f) => f.endsWith('.sql')).sort()) {
    await client.query('BEGIN');
    await client.query(readFileSync(join(dir, name), 'utf8'));
    await client.query('COMMIT');
    console.log(`applied ${name}`);
  }
} catch (error) {
  console.error(`db:migrate: ${error.message}`);
  process.exitCode = 1;
} finally {
  await client.end();
}
