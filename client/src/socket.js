// One WebSocket to relay, authenticated, resumable, self-healing: the client of a tab that
// does not share its connection, and the engine of the tab that leads a shared one (shared.js).
//
// createSocketClient({ url, getToken }) gives a connection manager that authenticates with
// the first message (the token never goes in the URL, so it never lands in access logs),
// keeps the last cursor of every channel, resumes after a reconnect, reports `resync` when
// the app must refetch its snapshot, answers heartbeats, detects a silent server, refreshes
// its token before it expires and reconnects with full-jitter backoff. See docs/protocol.md.
import { createBackoff } from './backoff.js';
import { CLOSE_CODE } from './closeCodes.js';
import { createListeners } from './listeners.js';
import { MESSAGE_TYPE } from './messages.js';
import { reconnectPolicy } from './reconnectPolicy.js';

/**
 * @import { CloseInfo, ConnectionState, RealtimeClient, RealtimeClientOptions } from '../index.js'
 */

/**
 * What shared.js adds when a tab takes over a shared connection: start from the cursors the
 * tabs had (and say why), as a reconnect, and hear when the server asks for a new token.
 * @typedef {object} SocketClientExtras
 * @property {{ cursors: Record<string, string>, wasConnected: boolean, cause: CloseInfo }} [resumeFrom]
 * @property {() => void} [onTokenExpiring]
 */
/** @typedef {RealtimeClientOptions & SocketClientExtras} SocketClientOptions */
/**
 * @typedef {RealtimeClient & { wake(): void }} SocketClient
 * `wake()`: the page came back (visible, resumed, woke from sleep): reconnect now if waiting,
 * and replace a connection that has been silent for longer than a heartbeat.
 */

// A timer that fires this much later than asked means the page was throttled, frozen or
// asleep: the silence it measured may be ours, not the server's.
const LATE_TIMER_MS = 2000;
// A connection silent for a heartbeat plus this is suspect when the page comes back.
const WAKE_SLACK_MS = 5000;

/** @type {ConnectionState[]} */
export const STATES = ['idle', 'connecting', 'authenticating', 'connected', 'reconnecting', 'closed'];

/** @type {CloseInfo} */
const NO_CAUSE = Object.freeze({ code: 0, reason: '' });
/** @type {CloseInfo} */
const CONNECT_CALLED = Object.freeze({ code: 0, reason: 'connect called' });
/** @type {CloseInfo} */
const CLIENT_CLOSED = Object.freeze({ code: CLOSE_CODE.NORMAL, reason: 'client closed' });

/** @returns {string | undefined} */
export function defaultUrl() {
  // Written out as `process.env.NEXT_PUBLIC_…` so that Next.js inlines it into the bundle.
  const base = typeof process !== 'undefined' && process.env
    ? process.env.NEXT_PUBLIC_WEBSOCKET_URL
    : undefined;
  return base ? `${base.replace(/\/+$/, '')}/ws` : undefined;
}

/**
 * The app's token endpoint: same origin, with the session cookie, never from a cache.
 * @param {typeof fetch} fetchImpl
 * @param {string} tokenUrl
 * @returns {() => Promise<string>}
 */
export function tokenEndpoint(fetchImpl, tokenUrl) {
  return async function getToken() {
    const response = await fetchImpl(tokenUrl, {
      credentials: 'include', cache: 'no-store', headers: { Accept: 'application/json' },
    });
    if (!response.ok) {
      throw Object.assign(new Error(`token endpoint answered ${response.status}`),
        { status: response.status });
    }
    const body = await response.json();
    return body.token;
  };
}

/**
 * @param {SocketClientOptions} [options]
 * @returns {SocketClient}
 */
export function createSocketClient(options = {}) {
  const {
    url = defaultUrl(),
    fetchImpl = (input, init) => globalThis.fetch(input, init),
    tokenUrl = '/api/auth/websocket-token',
    getToken = tokenEndpoint(fetchImpl, tokenUrl),
    WebSocketImpl = globalThis.WebSocket,
    setTimeout: setTimer = (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: clearTimer = (id) => globalThis.clearTimeout(/** @type {number} */ (id)),
    random = Math.random,
    backoff: backoffOptions = {},
    stableMs = 10000,
    heartbeatTimeoutMs,
    eventTarget = typeof window !== 'undefined' ? window : undefined,
    document: page = typeof document !== 'undefined' ? document : undefined,
    now = Date.now,
    resumeFrom,
    onTokenExpiring,
  } = options;
  if (!url) throw new Error('relay client: no url (set NEXT_PUBLIC_WEBSOCKET_URL or pass url)');
  const endpoint = url;
  if (!WebSocketImpl) throw new Error('relay client: no WebSocket implementation');

  const backoff = createBackoff({ ...backoffOptions, random });
  const { emit, reportError, methods } = createListeners();
  /** @type {Record<string, string>} */
  const cursors = {};
  /** @type {Record<string, string>} the resume map of the current connection's auth message */
  let resumeSent = {};
  /** @type {ConnectionState} */
  let state = 'idle';
  /** @type {WebSocket | null} */
  let ws = null;
  let stopped = true;
  let everConnected = false;
  let pingIntervalMs = 20000;
  /** @type {unknown} */
  let reconnectTimer = null;
  /** @type {unknown} */
  let watchdogTimer = null;
  let watchdogDue = 0; // when the watchdog should fire (wall clock)
  let watchdogGrace = false; // one late firing was already forgiven for this silence
  let lastMessageAt = 0;
  /** @type {unknown} */
  let stableTimer = null;
  /** @type {CloseInfo | null} */
  let lastClose = null;
  if (resumeFrom) {
    // Taking over a shared connection: a reconnect, from where the tabs were.
    Object.assign(cursors, resumeFrom.cursors);
    everConnected = resumeFrom.wasConnected;
    lastClose = resumeFrom.cause;
  }
  // Bumped by every open() and by close(): an attempt whose token arrives after it was
  // superseded must not open a second socket.
  let attemptId = 0;
  // The browser says the network is gone: attempts would only fail and grow the backoff.
  let offline = Boolean(eventTarget && eventTarget.navigator && eventTarget.navigator.onLine === false);
  let droppedOffline = false; // the network went away while this connection was up
  let environmentWatched = false;

  // Listeners get the state and, centrifuge-js style, why: { state, previous, code, reason }
  // (the close code and reason behind `reconnecting`/`closed`, 0 and a short cause otherwise).
  /**
   * @param {ConnectionState} next
   * @param {CloseInfo} [cause]
   */
  function setState(next, cause = NO_CAUSE) {
    if (state === next) return;
    const event = { state: next, previous: state, code: cause.code, reason: cause.reason };
    state = next;
    emit('state', next, event);
  }

  function clearTimers() {
    for (const timer of [reconnectTimer, watchdogTimer, stableTimer]) {
      if (timer !== null) clearTimer(timer);
    }
    reconnectTimer = watchdogTimer = stableTimer = null;
  }

  // Any message re-arms the watchdog; it fires when the server has been silent for 2.5
  // heartbeats. Browsers delay timers in background tabs (down to once a minute), freeze
  // pages and sleep with the machine: a timer that fires late measured our own stall, with
  // the server's messages maybe still queued behind it, so it gets one more heartbeat (plus
  // slack) before the connection is given up.
  function armWatchdog(timeout = heartbeatTimeoutMs ?? Math.round(pingIntervalMs * 2.5)) {
    if (watchdogTimer !== null) clearTimer(watchdogTimer);
    watchdogDue = now() + timeout;
    watchdogTimer = setTimer(onWatchdog, timeout);
  }

  function onWatchdog() {
    watchdogTimer = null;
    if (!watchdogGrace && now() - watchdogDue > LATE_TIMER_MS) {
      watchdogGrace = true;
      const full = heartbeatTimeoutMs ?? Math.round(pingIntervalMs * 2.5);
      armWatchdog(Math.min(full, pingIntervalMs + WAKE_SLACK_MS));
      return;
    }
    abandon('heartbeat timeout');
  }

  function heard() {
    lastMessageAt = now();
    watchdogGrace = false;
    armWatchdog();
  }

  /** @param {object} message */
  function send(message) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(message));
  }

  /** @param {string} reason */
  function abandon(reason) {
    const socket = ws;
    detach(socket);
    try {
      socket?.close(CLOSE_CODE.STALE_CONNECTION, reason);
    } catch {
      // already closing
    }
    scheduleReconnect({ code: CLOSE_CODE.STALE_CONNECTION, reason });
  }

  /** @param {WebSocket | null} socket */
  function detach(socket) {
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (ws === socket) ws = null;
  }

  async function open() {
    const attempt = ++attemptId;
    clearTimers();
    if (everConnected) setState('reconnecting', lastClose || NO_CAUSE);
    else setState('connecting', CONNECT_CALLED);
    let token;
    try {
      token = await getToken();
    } catch (caught) {
      if (attempt !== attemptId) return;
      const error = /** @type {{ status?: number } | undefined} */ (caught);
      if (error && (error.status === 401 || error.status === 403)) {
        // Not signed in: retrying cannot help until the app signs the user in and calls
        // connect() again; it would only poll the token endpoint every capMs.
        stopped = true;
        watchEnvironment(false);
        lastClose = { code: error.status, reason: 'token endpoint refused: not signed in' };
        setState('closed', lastClose);
        reportError(caught);
        return;
      }
      reportError(caught);
      scheduleReconnect({ code: 1006, reason: 'token fetch failed' });
      return;
    }
    if (stopped || attempt !== attemptId) return;
    let socket;
    try {
      socket = new WebSocketImpl(endpoint);
    } catch (error) {
      reportError(error);
      scheduleReconnect({ code: 1006, reason: 'cannot open' });
      return;
    }
    ws = socket;
    socket.onopen = () => {
      setState('authenticating', everConnected && lastClose ? lastClose : CONNECT_CALLED);
      /** @type {{ type: string, token: string, resume?: Record<string, string> }} */
      const auth = { type: MESSAGE_TYPE.AUTH, token };
      resumeSent = { ...cursors };
      if (Object.keys(resumeSent).length) auth.resume = resumeSent;
      socket.send(JSON.stringify(auth));
      heard();
    };
    socket.onmessage = (event) => {
      /** @type {any} JSON from the wire, checked field by field where it is used */
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      heard();
      handle(message);
    };
    socket.onclose = (event) => {
      detach(socket);
      onClosed({ code: event.code, reason: event.reason });
    };
    socket.onerror = () => {};
  }

  /** @param {any} message */
  function handle(message) {
    switch (message.type) {
      case MESSAGE_TYPE.CONNECTED: {
        if (typeof message.pingInterval === 'number') pingIntervalMs = message.pingInterval * 1000;
        // The server's cursors are its heads, sent *before* the replay. A channel we asked to
        // resume keeps our cursor until the replayed updates (or a resync) move it: jumping to
        // the head now would lose the rest of the replay if the connection dropped during it.
        for (const [channel, cursor] of Object.entries(message.cursors || {})) {
          if (!(channel in resumeSent)) cursors[channel] = cursor;
        }
        // A channel we asked to resume and that could not be is named by the `resync` the
        // server sends right after `connected` (protocol: "connected"); reporting it here too
        // made onResync fire twice for one reconnect. Only the channels we had no cursor for
        // are reported here.
        /** @type {string[]} */
        const notAsked = (message.channels || []).filter(
          (/** @type {string} */ channel) => !(channel in resumeSent));
        const missedSomething = everConnected && !message.resumed && notAsked.length > 0;
        everConnected = true;
        setState('connected', { code: 0, reason: message.resumed ? 'resumed' : 'connected' });
        stableTimer = setTimer(() => {
          stableTimer = null;
          backoff.reset();
        }, stableMs);
        heard();
        if (missedSomething) {
          emit('resync', { reason: 'reconnected', channels: notAsked });
        }
        break;
      }
      case MESSAGE_TYPE.UPDATE:
        if (message.channel && message.cursor) cursors[message.channel] = message.cursor;
        emit('update', message);
        break;
      case MESSAGE_TYPE.RESYNC:
        Object.assign(cursors, message.cursors || {});
        emit('resync', { reason: message.reason, channels: message.channels || [] });
        break;
      case MESSAGE_TYPE.PING:
        send({ type: MESSAGE_TYPE.PONG });
        break;
      case MESSAGE_TYPE.TOKEN_EXPIRING:
        onTokenExpiring?.();
        Promise.resolve()
          .then(() => getToken())
          .then((token) => send({ type: MESSAGE_TYPE.REFRESH, token }))
          .catch((error) => {
            // A client closed meanwhile (shared.js closes it when the user changed) is quiet.
            if (!stopped) reportError(error);
          });
        break;
      default:
        break;
    }
  }

  /** @param {CloseInfo} close */
  function onClosed(close) {
    clearTimers();
    lastClose = close;
    if (stopped) {
      setState('closed', close);
      return;
    }
    const policy = reconnectPolicy(close.code);
    if (policy === 'no') {
      stopped = true;
      watchEnvironment(false);
      setState('closed', close);
      reportError(new Error(`relay closed the connection: ${close.code} ${close.reason || ''}`));
      return;
    }
    scheduleReconnect(close);
  }

  /** @param {CloseInfo} close */
  function scheduleReconnect(close) {
    if (stopped) return;
    clearTimers();
    lastClose = close;
    setState('reconnecting', close);
    // Offline, wait for the `online` event; the long timer is only a safety net for a
    // browser that never sends it.
    const delay = offline ? (backoffOptions.capMs ?? 30000) : backoff.next();
    reconnectTimer = setTimer(() => {
      reconnectTimer = null;
      open();
    }, delay);
  }

  function reconnectNow() {
    if (stopped || state !== 'reconnecting' || reconnectTimer === null) return;
    clearTimer(reconnectTimer);
    reconnectTimer = null;
    open();
  }

  function onOnline() {
    offline = false;
    if (droppedOffline && ws && state === 'connected') {
      // The socket looks open but its network went away: it is most likely dead, and
      // waiting for the watchdog would leave the page stale for up to 2.5 heartbeats.
      replace('network changed');
    } else {
      reconnectNow();
    }
    droppedOffline = false;
  }

  function onOffline() {
    offline = true;
    if (state === 'connected') droppedOffline = true;
    if (reconnectTimer !== null) {
      clearTimer(reconnectTimer);
      reconnectTimer = setTimer(() => {
        reconnectTimer = null;
        open();
      }, backoffOptions.capMs ?? 30000);
    }
  }

  // Drop the current socket (it is most likely dead) and open a new one at once, resuming.
  /** @param {string} reason */
  function replace(reason) {
    const socket = ws;
    detach(socket);
    try {
      socket?.close(CLOSE_CODE.STALE_CONNECTION, reason);
    } catch {
      // already closing
    }
    clearTimers();
    lastClose = { code: CLOSE_CODE.STALE_CONNECTION, reason };
    open();
  }

  // The page came back (visible again, resumed from a freeze, the machine woke up). Hidden
  // tabs stay connected (see README), but a user returning expects current data now: a
  // tab waiting out a backoff reconnects at once, and a connection that has heard nothing
  // for longer than a heartbeat (the machine slept; the socket may look open and be dead)
  // is replaced instead of waiting up to 2.5 heartbeats for the watchdog.
  function wake() {
    if (stopped || offline) return;
    if (state === 'reconnecting') reconnectNow();
    else if (state === 'connected' && ws && now() - lastMessageAt > pingIntervalMs + WAKE_SLACK_MS) {
      replace('stale after sleep');
    }
  }

  function onVisibilityChange() {
    if (page?.visibilityState === 'visible') wake();
  }

  // Listeners go on when connect() is called and come off when the client stops, so that
  // clients created and closed by the shared store do not pile up on window.
  /** @param {boolean} on */
  function watchEnvironment(on) {
    if (on === environmentWatched) return;
    environmentWatched = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    if (eventTarget && typeof eventTarget[method] === 'function') {
      eventTarget[method]('online', onOnline);
      eventTarget[method]('offline', onOffline);
    }
    if (page && typeof page[method] === 'function') {
      page[method]('visibilitychange', onVisibilityChange);
      page[method]('resume', wake); // Page Lifecycle: the page was frozen and runs again
    }
  }

  return {
    connect() {
      if (!stopped) return;
      stopped = false;
      watchEnvironment(true);
      open();
    },
    close() {
      stopped = true;
      attemptId += 1;
      watchEnvironment(false);
      clearTimers();
      const socket = ws;
      detach(socket);
      try {
        socket?.close(CLOSE_CODE.NORMAL, 'client closed');
      } catch {
        // already closed
      }
      setState('closed', CLIENT_CLOSED);
    },
    ...methods,
    get state() {
      return state;
    },
    get cursors() {
      return { ...cursors };
    },
    get lastClose() {
      return lastClose;
    },
    get role() {
      return stopped ? 'none' : 'single';
    },
    wake,
  };
}
