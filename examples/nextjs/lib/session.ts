// ─── EXAMPLE ONLY — THIS IS NOT AUTHENTICATION ─────────────────────────────────────────
// The "session" is a cookie that simply names the user: anyone can set it to any name and
// be that user. It exists so that the example runs without an identity provider. In a real
// app, replace currentUserId() with your session lookup (NextAuth/Auth.js, Clerk, Supabase
// Auth, iron-session…) and delete signIn()/signOut().
import { cookies } from 'next/headers';

const COOKIE = 'relay_example_user';
// The user id becomes part of a PostgreSQL channel name (user_Subscription_<id>): relay
// accepts letters, digits and _.@:- only, and at most 63 bytes for the whole channel.
const USER_ID = /^[A-Za-z0-9_.@:-]{1,40}$/;

export function isValidUserId(value: string): boolean {
  return USER_ID.test(value);
}

export async function currentUserId(): Promise<string | null> {
  const value = (await cookies()).get(COOKIE)?.value;
  return value && isValidUserId(value) ? value : null;
}

export async function signIn(userId: string): Promise<void> {
  (await cookies()).set(COOKIE, userId, {
    httpOnly: true, sameSite: 'lax', path: '/', secure: process.env.NODE_ENV === 'production',
  });
}

export async function signOut(): Promise<void> {
  (await cookies()).delete(COOKIE);
}
