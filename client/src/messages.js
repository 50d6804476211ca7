// The protocol's message types (docs/protocol.md), named once: the client switches on these
// and sends these, and a test keeps the list equal to the doc's two tables.
export const MESSAGE_TYPE = Object.freeze({
  // server → client
  CONNECTED: 'connected',
  UPDATE: 'update',
  RESYNC: 'resync',
  PING: 'ping',
  TOKEN_EXPIRING: 'token_expiring',
  TOKEN_REFRESHED: 'token_refreshed',
  // client → server
  AUTH: 'auth',
  PONG: 'pong',
  REFRESH: 'refresh',
});
