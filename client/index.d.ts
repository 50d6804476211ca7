export type ConnectionState =
  | 'idle' | 'connecting' | 'authenticating' | 'connected' | 'reconnecting' | 'closed';

/** The protocol's message types (docs/protocol.md). */
export const MESSAGE_TYPE: {
  readonly CONNECTED: 'connected';
  readonly UPDATE: 'update';
  readonly RESYNC: 'resync';
  readonly PING: 'ping';
  readonly TOKEN_EXPIRING: 'token_expiring';
  readonly TOKEN_REFRESHED: 'token_refreshed';
  readonly AUTH: 'auth';
  readonly PONG: 'pong';
  readonly REFRESH: 'refresh';
};

export interface Update<T = unknown> {
  type: 'update';
  table: string;
  channel: string;
  seq: number;
  cursor: string;
  data: T;
}

/**
 * Why the state changed, centrifuge-js style. `code`/`reason`: for `reconnecting` and `closed`
 * the close that caused it (a relay close code, 1006 for a lost network, 4000 when the client
 * dropped a connection it took for dead, 1000 after close(), or the token endpoint's HTTP
 * 401/403 when signed out); 0 with a short cause otherwise ('connect called', 'connected',
 * 'resumed').
 */
export interface StateEvent {
  state: ConnectionState;
  previous: ConnectionState;
  code: number;
  reason: string;
}

export interface ResyncInfo {
  reason: string;
  channels: string[];
}

export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
}

export interface RealtimeClientOptions {
  /** wss://host/ws — defaults to NEXT_PUBLIC_WEBSOCKET_URL + '/ws'. */
  url?: string;
  /**
   * Returns a fresh JWT; default: GET `tokenUrl` → { token }, with credentials, no-store.
   * An error with `status` 401 or 403 means "not signed in": the client stops (state
   * `closed`, onError) instead of retrying; any other error is retried with backoff.
   */
  getToken?: () => Promise<string>;
  /** Token endpoint of the default getToken (default '/api/auth/websocket-token'). */
  tokenUrl?: string;
  /** fetch used by the default getToken (default: globalThis.fetch). */
  fetchImpl?: typeof fetch;
  WebSocketImpl?: typeof WebSocket;
  backoff?: BackoffOptions;
  /** Backoff resets after a connection stayed up this long (default 10000). */
  stableMs?: number;
  /** Silence after which the server is considered dead (default 2.5 × pingInterval). */
  heartbeatTimeoutMs?: number;
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  /** Where `online`/`offline` are heard (default: window). */
  eventTarget?: EventTarget;
  /** Where `visibilitychange` is heard (default: document). */
  document?: EventTarget & { visibilityState: string };
}

export interface RealtimeClient {
  connect(): void;
  close(): void;
  subscribe(callback: (update: Update) => void): () => void;
  onState(callback: (state: ConnectionState, event: StateEvent) => void): () => void;
  onResync(callback: (info: ResyncInfo) => void): () => void;
  onError(callback: (error: Error) => void): () => void;
  readonly state: ConnectionState;
  readonly cursors: Record<string, string>;
  readonly lastClose: { code: number; reason: string } | null;
}

export function createRealtimeClient(options?: RealtimeClientOptions): RealtimeClient;

export interface Backoff {
  next(): number;
  reset(): void;
  readonly attempt: number;
}
export function createBackoff(options?: BackoffOptions & { random?: () => number }): Backoff;

export interface CloseCode {
  code: number;
  name: string;
  reason: string;
  reconnect: 'yes' | 'new-token' | 'no';
}
export const CLOSE_CODES: CloseCode[];
/** The codes by name (generated with CLOSE_CODES from relay/closecodes.py). */
export const CLOSE_CODE: {
  readonly NORMAL: number;
  readonly GOING_AWAY: number;
  readonly PROTOCOL_ERROR: number;
  readonly UNSUPPORTED_DATA: number;
  readonly INVALID_PAYLOAD: number;
  readonly POLICY_VIOLATION: number;
  readonly MESSAGE_TOO_BIG: number;
  readonly INTERNAL_ERROR: number;
  readonly SERVICE_RESTART: number;
  readonly TRY_AGAIN_LATER: number;
  /** The client's own: it dropped a connection it took for dead, and resumes at once. */
  readonly STALE_CONNECTION: number;
  readonly UNAUTHORIZED: number;
  readonly FORBIDDEN: number;
  readonly TOO_MANY_CONNECTIONS: number;
  readonly SLOW_CONSUMER: number;
  readonly AUTH_TIMEOUT: number;
  readonly HEARTBEAT_TIMEOUT: number;
};
export function reconnectPolicy(code: number): 'yes' | 'new-token' | 'no';
export function closeCodeName(code: number): string;
export const STATES: ConnectionState[];

export interface SharedStore {
  acquire(options?: RealtimeClientOptions): RealtimeClient;
  release(): void;
  watch(watcher: (status: { isConnected: boolean; subscriberCount: number }) => void): () => void;
  snapshot(): { isConnected: boolean; subscriberCount: number };
  readonly client: RealtimeClient | null;
}
export function createSharedStore(
  factory?: (options?: RealtimeClientOptions) => RealtimeClient,
  options?: { graceMs?: number },
): SharedStore;
