// One WebSocket for all the tabs of an origin (client/README.md, "Sharing").
//
// Each tab fetches its own token and reads whose it is (token.js); the tabs of one user on
// one relay form a group: a BroadcastChannel and an election (election.js). The leader runs
// the connection (socket.js) and posts what it hears to the group; the others deliver what
// the leader posts. Every tab keeps its own cursors (cursors.js): duplicates from a hand-over
// are dropped, and a new leader resumes from where the tabs were. A tab whose token names
// another user moves to that user's group, so no tab ever carries another user's updates.
import { createBackoff } from './backoff.js';
import { CLOSE_CODE } from './closeCodes.js';
import { createCursorBook } from './cursors.js';
import { electLeader } from './election.js';
import { createListeners } from './listeners.js';
import { reconnectPolicy } from './reconnectPolicy.js';
import { createSocketClient, defaultUrl, tokenEndpoint } from './socket.js';
import { tokenClaims } from './token.js';

/**
 * @import { CloseInfo, ClientRole, ConnectionState, RealtimeClient, RealtimeClientOptions,
 *   ResyncInfo, Update } from '../index.js'
 * @import { Election } from './election.js'
 * @import { SocketClient } from './socket.js'
 */

/**
 * What tabs post to their group. From the leader: `state` (also the answer to `hello`, with
 * its cursors), `update`, `resync` (with the channels' new cursors), `closed` (terminal for
 * the user: every tab stops). From any tab: `hello` (joined: who leads, where are we?),
 * `wake` (a tab came back: is the connection still alive?). From the leader's connection:
 * `verify` (the server asked for a new token: each tab checks its user still is this one).
 * @typedef {{ t: 'state', state: ConnectionState, code: number, reason: string,
 *     cursors: Record<string, string> }
 *   | { t: 'update', update: Update }
 *   | { t: 'resync', info: ResyncInfo, cursors: Record<string, string> }
 *   | { t: 'closed', code: number, reason: string }
 *   | { t: 'hello' | 'wake' | 'verify' }} TabPost
 */

/**
 * @typedef {object} Group
 * @property {string} userId
 * @property {string} name
 * @property {BroadcastChannel} channel
 * @property {Election | null} election
 */

// Part of every group's name: tabs running another version of this file never meet.
const GROUP_PREFIX = 'relay-client/1';
// The token a tab fetched to learn its user also opens the connection while this fresh.
const REUSE_TOKEN_MS = 10000;
const REUSE_MIN_VALIDITY_S = 30;
// After a close that ends the user's connection for every tab, the leader keeps the lead this
// long, so that the other tabs hear it before one of them could take over and try again.
const CLOSED_HOLD_MS = 1000;

/** @type {CloseInfo} */
const CONNECT_CALLED = Object.freeze({ code: 0, reason: 'connect called' });
/** @type {CloseInfo} */
const CLIENT_CLOSED = Object.freeze({ code: CLOSE_CODE.NORMAL, reason: 'client closed' });
/** @type {CloseInfo} */
const LEADER_CHANGED = Object.freeze({ code: 0, reason: 'leader changed' });
/** @type {CloseInfo} */
const USER_CHANGED = Object.freeze({ code: 0, reason: 'user changed' });

/**
 * @param {RealtimeClientOptions} [options]
 * @returns {RealtimeClient}
 */
export function createSharedClient(options = {}) {
  const {
    url = defaultUrl(),
    fetchImpl = (input, init) => globalThis.fetch(input, init),
    tokenUrl = '/api/auth/websocket-token',
    getToken = tokenEndpoint(fetchImpl, tokenUrl),
    BroadcastChannelImpl = globalThis.BroadcastChannel,
    locks = globalThis.navigator?.locks,
    setTimeout: setTimer = (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: clearTimer = (id) => globalThis.clearTimeout(/** @type {number} */ (id)),
    random = Math.random,
    now = Date.now,
    backoff: backoffOptions = {},
    eventTarget = typeof window !== 'undefined' ? window : undefined,
    document: page = typeof document !== 'undefined' ? document : undefined,
  } = options;
  if (!url) throw new Error('relay client: no url (set NEXT_PUBLIC_WEBSOCKET_URL or pass url)');
  const relayUrl = url;
  if (!BroadcastChannelImpl) return createSocketClient(options); // tabs cannot talk: no sharing
  const Channel = BroadcastChannelImpl;

  const { emit, reportError, methods } = createListeners();
  const book = createCursorBook();
  const backoff = createBackoff({ ...backoffOptions, random });
  /** @type {ConnectionState} */
  let state = 'idle';
  /** @type {CloseInfo | null} */
  let lastClose = null;
  /** @type {ClientRole} */
  let role = 'none';
  let stopped = true;
  let everConnected = false;
  /** @type {Group | null} */
  let group = null;
  /** @type {SocketClient | null} the connection, when this tab leads or has its own */
  let core = null;
  /** @type {CloseInfo} why the connection is in its state (told to tabs that join) */
  let leaderCause = LEADER_CHANGED;
  /** @type {{ token: string, at: number, exp: number | undefined } | null} */
  let fresh = null; // the token that found this tab's group, for the connection to reuse
  let joinAttempt = 0;
  /** @type {unknown} */
  let retryTimer = null;
  /**
   * @type {string | null} reported with onResync when the tab next connects: 'user changed',
   * or 'reconnected' for a tab that rejoins its user's group (what it missed meanwhile
   * cannot be replayed to it)
   */
  let pendingResync = null;
  /** @type {string | null} the user of this tab's cursors */
  let cursorsUser = null;
  let paused = false; // frozen or in the back/forward cache: gave up the lead, rejoins on return
  let watching = false;

  /**
   * @param {ConnectionState} next
   * @param {CloseInfo} cause
   */
  function setState(next, cause) {
    if (state === next) return;
    const event = { state: next, previous: state, code: cause.code, reason: cause.reason };
    state = next;
    if (next === 'reconnecting' || next === 'closed') lastClose = { code: cause.code, reason: cause.reason };
    if (next === 'connected') {
      everConnected = true;
      backoff.reset();
    }
    emit('state', next, event);
    if (next === 'connected' && pendingResync !== null) {
      const reason = pendingResync;
      pendingResync = null;
      emit('resync', { reason, channels: Object.keys(book.snapshot()) });
    }
  }

  /** @param {TabPost} message */
  function post(message) {
    try {
      group?.channel.postMessage(message);
    } catch {
      // closed meanwhile
    }
  }

  // --- joining: find this tab's user, then its group -------------------------------------

  async function join() {
    const attempt = ++joinAttempt;
    if (retryTimer !== null) clearTimer(retryTimer);
    retryTimer = null;
    if (everConnected) setState('reconnecting', lastClose || LEADER_CHANGED);
    else setState('connecting', CONNECT_CALLED);
    let token;
    try {
      token = await getToken();
    } catch (caught) {
      if (attempt !== joinAttempt || stopped) return;
      const status = /** @type {{ status?: number } | undefined} */ (caught)?.status;
      if (status === 401 || status === 403) {
        signedOut(status, caught);
        return;
      }
      reportError(caught);
      setState('reconnecting', { code: 1006, reason: 'token fetch failed' });
      retryTimer = setTimer(() => {
        retryTimer = null;
        join();
      }, backoff.next());
      return;
    }
    if (attempt !== joinAttempt || stopped) return;
    enter(token);
  }

  /** @param {string} token */
  function enter(token) {
    const claims = tokenClaims(token);
    fresh = { token, at: now(), exp: claims?.exp };
    if (claims && cursorsUser !== null && claims.userId !== cursorsUser) {
      book.clear(); // another user's positions mean nothing here
      pendingResync = 'user changed';
    } else if (claims && everConnected && pendingResync === null) {
      pendingResync = 'reconnected';
    }
    if (claims) cursorsUser = claims.userId;
    /** @type {BroadcastChannel | null} */
    let channel = null;
    const name = claims ? `${GROUP_PREFIX} ${relayUrl} ${claims.userId}` : '';
    if (claims) {
      try {
        channel = new Channel(name);
      } catch {
        channel = null; // e.g. an opaque origin: share nothing, silently
      }
    }
    if (!claims || !channel) {
      // Not a JWT with a userId (so no way to tell whose it is), or no channel: own socket.
      role = 'single';
      startCore(null);
      return;
    }
    /** @type {Group} */
    const joined = { userId: claims.userId, name, channel, election: null };
    group = joined;
    role = 'follower';
    channel.onmessage = (event) => onGroupMessage(joined, event.data);
    stand(joined);
    post({ t: 'hello' });
  }

  /** @param {Group} joined */
  function stand(joined) {
    joined.election = electLeader({
      name: joined.name,
      locks,
      BroadcastChannelImpl: Channel,
      onLead: () => lead(joined),
      onFollow: () => follow(joined),
      setTimer,
      clearTimer,
      now,
      random,
    });
  }

  /** @param {Group} joined */
  function lead(joined) {
    if (joined !== group || stopped || paused) return;
    // The connection resumes from this tab's cursors: it reports what it could not replay.
    if (pendingResync === 'reconnected') pendingResync = null;
    role = 'leader';
    startCore(joined);
  }

  /** @param {Group} joined */
  function follow(joined) {
    if (joined !== group) return;
    dropCore();
    role = 'follower';
  }

  // Leaves the group (if any) and drops the connection (if this tab held it).
  function leave() {
    joinAttempt += 1;
    dropCore();
    if (group) {
      group.election?.close();
      group.channel.onmessage = null;
      group.channel.close();
      group = null;
    }
    role = 'none';
  }

  /**
   * @param {number} status
   * @param {unknown} error
   */
  function signedOut(status, error) {
    stopped = true;
    leave();
    watchPage(false);
    setState('closed', { code: status, reason: 'token endpoint refused: not signed in' });
    reportError(error);
  }

  // --- the connection, in the leading (or single) tab ------------------------------------

  /** @param {Group | null} joined null: a connection of this tab's own */
  function startCore(joined) {
    /** @type {SocketClient} */
    const connection = createSocketClient({
      ...options,
      url: relayUrl,
      getToken: () => connectionToken(joined),
      resumeFrom: {
        cursors: book.snapshot(),
        wasConnected: everConnected && pendingResync === null,
        cause: joined ? LEADER_CHANGED : lastClose || CONNECT_CALLED,
      },
      onTokenExpiring: joined ? () => post({ t: 'verify' }) : undefined,
    });
    core = connection;
    leaderCause = LEADER_CHANGED;
    let endedItself = false; // its closing error, reported right after 'closed', is ours
    connection.onState((next, event) => {
      if (core !== connection) return;
      if (next === 'closed') {
        endedItself = true;
        coreClosed(connection, joined);
        return;
      }
      if (next === 'connected') book.adopt(connection.cursors);
      leaderCause = { code: event.code, reason: event.reason };
      setState(next, event);
      if (joined) post({ t: 'state', state: next, ...leaderCause, cursors: connection.cursors });
    });
    connection.subscribe((update) => {
      if (core !== connection) return;
      deliver(update);
      if (joined) post({ t: 'update', update });
    });
    connection.onResync((info) => {
      if (core !== connection) return;
      /** @type {Record<string, string>} */
      const cursors = {};
      const all = connection.cursors;
      for (const channel of info.channels) if (channel in all) cursors[channel] = all[channel];
      resync(info, cursors);
      if (joined) post({ t: 'resync', info, cursors });
    });
    connection.onError((error) => {
      if (core === connection || endedItself) reportError(error);
    });
    connection.connect();
  }

  function dropCore() {
    const connection = core;
    core = null; // first: its last events (closed) are not this tab's any more
    connection?.close();
  }

  /**
   * The connection's token: the tab's own getToken, the one that found the group reused
   * while fresh. A token of another user takes the tab to that user's group instead.
   * @param {Group | null} joined
   * @returns {Promise<string>}
   */
  async function connectionToken(joined) {
    const reuse = fresh;
    fresh = null;
    const stillValid = reuse && now() - reuse.at < REUSE_TOKEN_MS
      && (reuse.exp === undefined || reuse.exp - now() / 1000 > REUSE_MIN_VALIDITY_S);
    const token = reuse && stillValid ? reuse.token : await getToken();
    if (joined && joined === group && tokenClaims(token)?.userId !== joined.userId) {
      switchUser(token); // closes this connection first, so its attempt ends quietly
      throw new Error('relay client: the user changed');
    }
    return token;
  }

  /**
   * The connection stopped by itself. A token endpoint that refuses (signed out) concerns
   * this tab only: it leaves, and another tab leads with its own token. A terminal close
   * from relay (4003, a client bug) concerns the user: every tab of the group stops.
   * @param {SocketClient} connection
   * @param {Group | null} joined
   */
  function coreClosed(connection, joined) {
    const close = connection.lastClose || { code: 1006, reason: '' };
    core = null;
    stopped = true;
    const forEveryTab = joined && close.code >= 1000 && reconnectPolicy(close.code) === 'no';
    if (forEveryTab && group) {
      post({ t: 'closed', code: close.code, reason: close.reason });
      // Hold the lead a moment, so that no tab takes it over before it heard that it is over.
      const election = group.election;
      group.election = null;
      setTimer(() => election?.close(), CLOSED_HOLD_MS);
    }
    leave();
    watchPage(false);
    setState('closed', close);
  }

  // --- what every tab does with what its group says --------------------------------------

  /** @param {Update} update */
  function deliver(update) {
    const verdict = book.accept(update);
    if (verdict === 'duplicate') return;
    if (verdict === 'gap') {
      // Updates before this one never reached this tab (it was frozen, say): refetch.
      emit('resync', { reason: 'missed updates', channels: [update.channel] });
    }
    emit('update', update);
  }

  /**
   * @param {ResyncInfo} info
   * @param {Record<string, string>} cursors
   */
  function resync(info, cursors) {
    book.adopt(cursors, { replace: true });
    emit('resync', { reason: info.reason, channels: info.channels });
  }

  /**
   * @param {Group} joined
   * @param {TabPost} message
   */
  function onGroupMessage(joined, message) {
    if (joined !== group || stopped || !message || typeof message !== 'object') return;
    switch (message.t) {
      case 'hello':
        if (role === 'leader' && core && core.state !== 'idle') {
          post({ t: 'state', state: core.state, ...leaderCause, cursors: core.cursors });
        }
        break;
      case 'state':
        if (role !== 'follower' || message.state === 'idle' || message.state === 'closed') break;
        book.adopt(message.cursors);
        setState(message.state, message);
        break;
      case 'update':
        // From any leader, also an old one whose last posts are still arriving: the cursor
        // book drops what this tab already has.
        deliver(message.update);
        break;
      case 'resync':
        resync(message.info, message.cursors);
        break;
      case 'closed':
        if (role !== 'follower') break;
        stopped = true;
        leave();
        watchPage(false);
        setState('closed', message);
        reportError(new Error(`relay closed the connection: ${message.code} ${message.reason}`));
        break;
      case 'wake':
        if (role === 'leader') core?.wake();
        break;
      case 'verify':
        if (role === 'follower') verifyUser(joined);
        break;
      default:
        break;
    }
  }

  // The leader's connection was asked for a new token: each tab checks that its own token
  // still names the group's user (another user signed in, in this tab's session).
  /** @param {Group} joined */
  async function verifyUser(joined) {
    let token;
    try {
      token = await getToken();
    } catch (caught) {
      const status = /** @type {{ status?: number } | undefined} */ (caught)?.status;
      if (joined === group && !stopped && (status === 401 || status === 403)) signedOut(status, caught);
      return; // anything else: the leader's connection goes on; check again next time
    }
    if (joined !== group || stopped) return;
    if (tokenClaims(token)?.userId !== joined.userId) switchUser(token);
  }

  /** @param {string} token */
  function switchUser(token) {
    leave();
    if (everConnected) setState('reconnecting', USER_CHANGED);
    enter(token);
  }

  // --- the page: hidden, frozen, back/forward cache --------------------------------------

  function onVisibilityChange() {
    if (page?.visibilityState === 'visible' && role === 'follower') post({ t: 'wake' });
  }

  // A frozen tab (or one in the back/forward cache) cannot lead: it hands the connection
  // over at once, and stands again as a follower when it runs again.
  function pause() {
    if (paused || !group) return;
    paused = true;
    dropCore();
    group.election?.close();
    group.election = null;
    role = 'follower';
  }

  function unpause() {
    if (!paused) return;
    paused = false;
    if (!group || stopped) return;
    stand(group);
    post({ t: 'hello' });
    post({ t: 'wake' });
  }

  /** @param {Event} event */
  function onPageHide(event) {
    if (/** @type {PageTransitionEvent} */ (event).persisted) pause();
    else leave(); // unloading: hand over now (the socket, the lock, a goodbye to the group)
  }

  /** @param {Event} event */
  function onPageShow(event) {
    if (/** @type {PageTransitionEvent} */ (event).persisted) unpause();
  }

  /** @param {boolean} on */
  function watchPage(on) {
    if (on === watching) return;
    watching = on;
    const method = on ? 'addEventListener' : 'removeEventListener';
    if (page && typeof page[method] === 'function') {
      page[method]('visibilitychange', onVisibilityChange);
      page[method]('freeze', pause);
      page[method]('resume', unpause);
    }
    if (eventTarget && typeof eventTarget[method] === 'function') {
      eventTarget[method]('pagehide', onPageHide);
      eventTarget[method]('pageshow', onPageShow);
    }
  }

  return {
    connect() {
      if (!stopped) return;
      stopped = false;
      watchPage(true);
      join();
    },
    close() {
      if (retryTimer !== null) clearTimer(retryTimer);
      retryTimer = null;
      stopped = true;
      paused = false;
      leave();
      watchPage(false);
      setState('closed', CLIENT_CLOSED);
    },
    ...methods,
    get state() {
      return state;
    },
    get cursors() {
      return book.snapshot();
    },
    get lastClose() {
      return lastClose;
    },
    get role() {
      return role;
    },
  };
}
