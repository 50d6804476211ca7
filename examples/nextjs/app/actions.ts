'use server';
// Server actions: they run on the server, next to the database. None of them refreshes the
// page: the change reaches the browser the way every change does, through PostgreSQL's
// trigger and relay's WebSocket.
import { redirect } from 'next/navigation';

import { db } from '@/lib/db';
import { currentUserId, isValidUserId, signIn, signOut } from '@/lib/session';

const NEXT_PLAN: Record<string, string> = { free: 'pro', pro: 'team', team: 'enterprise' };

export async function changePlan(): Promise<void> {
  const userId = await currentUserId();
  if (!userId) redirect('/login');
  const { rows } = await db().query(`SELECT "plan" FROM "Subscription" WHERE "userId" = $1`,
    [userId]);
  const plan = NEXT_PLAN[rows[0]?.plan] ?? 'free';
  await db().query(
    `INSERT INTO "Subscription" ("userId", "plan") VALUES ($1, $2)
     ON CONFLICT ("userId") DO UPDATE SET "plan" = EXCLUDED."plan", "updatedAt" = now()`,
    [userId, plan],
  );
}

// EXAMPLE ONLY (see lib/session.ts): signs in as whoever the form names.
export async function logIn(formData: FormData): Promise<void> {
  const userId = String(formData.get('userId') ?? '').trim();
  if (!isValidUserId(userId)) redirect('/login?error=invalid');
  await signIn(userId);
  await db().query(
    `INSERT INTO "Subscription" ("userId", "plan") VALUES ($1, 'free') ON CONFLICT DO NOTHING`,
    [userId],
  );
  redirect('/');
}

export async function logOut(): Promise<void> {
  await signOut();
  redirect('/login');
}
