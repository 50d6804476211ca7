// GET /api/auth/websocket-token — issues the short-lived JWT the browser presents to relay.
// Runs on Vercel next to the app; it holds no connection open, so it costs one request.
import jwt from 'jsonwebtoken';
import { NextResponse, type NextRequest } from 'next/server';

// jsonwebtoken needs Node's crypto: keep this route off the Edge runtime even if a parent
// layout opts into it.
export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

const NO_STORE = { 'Cache-Control': 'no-store' };

// ─── PLACEHOLDER ─────────────────────────────────────────────────────────────────────
// Replace with the app's own session lookup (NextAuth, Clerk, Supabase, a cookie…):
// return the signed-in user's id, or null when nobody is signed in (→ 401). Until it is
// wired it throws, so an unwired endpoint fails loudly (500) instead of looking signed out.
async function getUserId(request: NextRequest): Promise<string | null> {
  void request;
  throw new Error('getUserId: wire this to your authentication');
}

export async function GET(request: NextRequest) {
  const userId = await getUserId(request);
  if (!userId) {
    return NextResponse.json({ error: 'not signed in' }, { status: 401, headers: NO_STORE });
  }
  const secret = process.env.WEBSOCKET_JWT_SECRET;
  if (!secret || Buffer.byteLength(secret) < 32) {
    return NextResponse.json({ error: 'WEBSOCKET_JWT_SECRET is not configured' },
      { status: 500, headers: NO_STORE });
  }
  const token = jwt.sign({ userId }, secret, {
    algorithm: 'HS256',
    issuer: 'papr-app',
    audience: 'papr-realtime',
    expiresIn: '1h',
  });
  return NextResponse.json({ token }, { headers: NO_STORE });
}
