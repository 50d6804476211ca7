// GET /api/auth/websocket-token — issues the short-lived JWT the browser presents to relay.
// Runs on Vercel next to the app; it holds no connection open, so it costs one request.
import jwt from 'jsonwebtoken';
import { NextResponse, type NextRequest } from 'next/server';

import { currentUserId } from '@/lib/session';

// jsonwebtoken needs Node's crypto: keep this route off the Edge runtime even if a parent
// layout opts into it.
export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';

const NO_STORE = { 'Cache-Control': 'no-store' };

// ─── WIRE THIS TO YOUR AUTHENTICATION ────────────────────────────────────────────────
// Return the signed-in user's id, or null when nobody is signed in (→ 401). The example's
// currentUserId() reads a cookie that merely names the user (lib/session.ts: EXAMPLE ONLY,
// not authentication); a real app returns the id from its session (NextAuth, Clerk,
// Supabase…). The id must be the value the tables' user column holds.
async function getUserId(request: NextRequest): Promise<string | null> {
  void request;
  return currentUserId();
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
  // relay's RELAY_JWT_ISSUER / RELAY_JWT_AUDIENCE; an environment of its own (a preview
  // with its own relay) sets both on each side, so its tokens open no other relay.
  const token = jwt.sign({ userId }, secret, {
    algorithm: 'HS256',
    issuer: process.env.RELAY_JWT_ISSUER || 'papr-app',
    audience: process.env.RELAY_JWT_AUDIENCE || 'papr-realtime',
    expiresIn: '1h',
  });
  return NextResponse.json({ token }, { headers: NO_STORE });
}
