// Reads the claims that decide which tabs may share a connection from a JWT, without
// verifying it: relay verifies every token it is given; a tab only needs to know whose it is.

/**
 * @param {unknown} token
 * @returns {{ userId: string, exp: number | undefined } | null} null when not a JWT with a userId
 */
export function tokenClaims(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')),
      (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    const { userId, exp } = claims;
    // relay reads userId "as a string": 42 and "42" are the same user.
    if (typeof userId !== 'string' && typeof userId !== 'number') return null;
    if (String(userId) === '') return null;
    return { userId: String(userId), exp: typeof exp === 'number' ? exp : undefined };
  } catch {
    return null;
  }
}
