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

/** A close (or what stands for one): code and reason. */
export interface CloseInfo {
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
  /** Where `online`/`offline` are heard, and `navigator.onLine` read (default: window). */
  eventTarget?: EventTarget & { navigator?: { onLine?: boolean } };
  /** Where `visibilitychange`, `freeze` and `resume` are heard (default: document). */
  document?: EventTarget & { visibilityState: string };
  /**
   * Share one WebSocket among the tabs of this origin that use the same relay `url` for the
   * same user (default true; see the README's "Sharing"). false: this tab opens its own.
   */
  share?: boolean;
  /** How tabs talk to each other (default: globalThis.BroadcastChannel; null: they cannot, no sharing). */
  BroadcastChannelImpl?: typeof BroadcastChannel | null;
  /** Elects the tab that holds the connection (default: navigator.locks; null: elect over BroadcastChannel). */
  locks?: LockManager | null;
  /** Wall clock in ms (default Date.now): tells a late timer from a silent server. */
  now?: () => number;
}

/**
 * 'leader': holds the connection shared with this origin's other tabs; 'follower': receives
 * it from the leader; 'single': has a connection of its own (sharing off or impossible);
 * 'none': before connect() and after close().
 */
export type ClientRole = 'none' | 'single' | 'leader' | 'follower';

export interface RealtimeClient {
  connect(): void;
  close(): void;
  subscribe(callback: (update: Update) => void): () => void;
  onState(callback: (state: ConnectionState, event: StateEvent) => void): () => void;
  onResync(callback: (info: ResyncInfo) => void): () => void;
  onError(callback: (error: Error) => void): () => void;
  readonly state: ConnectionState;
  readonly cursors: Record<string, string>;
  readonly lastClose: CloseInfo | null;
  readonly role: ClientRole;
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
  readonly NORMAL: 1000;
  readonly GOING_AWAY: 1001;
  readonly PROTOCOL_ERROR: 1002;
  readonly UNSUPPORTED_DATA: 1003;
  readonly INVALID_PAYLOAD: 1007;
  readonly POLICY_VIOLATION: 1008;
  readonly MESSAGE_TOO_BIG: 1009;
  readonly INTERNAL_ERROR: 1011;
  readonly SERVICE_RESTART: 1012;
  readonly TRY_AGAIN_LATER: 1013;
  /** The client's own: it dropped a connection it took for dead, and resumes at once. */
  readonly STALE_CONNECTION: 4000;
  readonly UNAUTHORIZED: 4001;
  readonly FORBIDDEN: 4003;
  readonly TOO_MANY_CONNECTIONS: 4008;
  readonly SLOW_CONSUMER: 4009;
  readonly AUTH_TIMEOUT: 4010;
  readonly HEARTBEAT_TIMEOUT: 4011;
};
export function reconnectPolicy(code: number): 'yes' | 'new-token' | 'no';
export function closeCodeName(code: number): string;
export const STATES: ConnectionState[];

/** What the React hook returns: this page's connection and its mounted subscribers. */
export interface ConnectionStatus {
  isConnected: boolean;
  subscriberCount: number;
}

export interface SharedStore {
  acquire(options?: RealtimeClientOptions): RealtimeClient;
  release(): void;
  watch(watcher: (status: ConnectionStatus) => void): () => void;
  snapshot(): ConnectionStatus;
  readonly client: RealtimeClient | null;
}
export function createSharedStore(
  factory?: (options?: RealtimeClientOptions) => RealtimeClient,
  options?: { graceMs?: number },
): SharedStore;
