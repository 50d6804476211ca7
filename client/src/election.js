// Which tab of a group holds the shared connection: one leader at a time, another at once
// when it goes.
//
// With the Web Locks API (every current browser, secure contexts only) the leader is the tab
// holding the lock `name`: the browser releases it when the tab closes or crashes and grants
// it to the next tab waiting. Without it (an old browser, a page over plain http) the tabs
// elect over a BroadcastChannel: the leader announces itself every `heartbeatMs`, says
// goodbye when it leaves, and a tab that has heard no leader for `leaseMs` claims the lead;
// of two leaders that hear each other the one with the smaller id stays.

/**
 * @typedef {object} ElectionOptions
 * @property {string} name
 * @property {LockManager | null | undefined} locks
 * @property {typeof BroadcastChannel} BroadcastChannelImpl
 * @property {() => void} onLead   this tab now leads
 * @property {() => void} onFollow this tab lost the lead to another (broadcast election only)
 * @property {(fn: () => void, ms: number) => unknown} setTimer
 * @property {(id: unknown) => void} clearTimer
 * @property {() => number} now
 * @property {() => number} random
 * @property {number} [heartbeatMs]
 * @property {number} [leaseMs]
 */

/** @typedef {{ close(): void, readonly kind: 'locks' | 'broadcast' }} Election */

/**
 * An id no other tab has (tabs order themselves by it).
 * @param {() => number} now
 */
function uniqueId(now) {
  const bits = new Uint32Array(2);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bits);
  else for (let i = 0; i < bits.length; i++) bits[i] = Math.floor(Math.random() * 2 ** 32);
  return `${now().toString(36)}-${bits[0].toString(36)}${bits[1].toString(36)}`;
}

/**
 * Stand for leadership until close() (which gives the lead up, or stops waiting for it).
 * @param {ElectionOptions} options
 * @returns {Election}
 */
export function electLeader(options) {
  const { locks } = options;
  if (locks && typeof locks.request === 'function') return electWithLocks(options);
  return electWithBroadcast(options);
}

/**
 * @param {ElectionOptions} options
 * @returns {Election}
 */
function electWithLocks(options) {
  const { name, locks, onLead } = options;
  const abort = new AbortController();
  let closed = false;
  /** @type {(() => void) | null} */
  let release = null;
  /** @type {Election | null} */
  let fallback = null;
  /** @type {LockManager} */ (locks)
    .request(name, { signal: abort.signal }, () => new Promise((resolve) => {
      if (closed) {
        resolve(undefined);
        return;
      }
      release = () => resolve(undefined);
      try {
        onLead();
      } catch (error) {
        // A bug in the leader's start must surface, not release the lock (and so reach the
        // catch below) as if locks were unusable.
        queueMicrotask(() => { throw error; });
      }
    }))
    .catch(() => {
      // Aborted by close(), or the page may not use locks (a sandboxed frame): elect without.
      if (!closed) fallback = electWithBroadcast(options);
    });
  return {
    kind: 'locks',
    close() {
      closed = true;
      abort.abort();
      release?.();
      release = null;
      fallback?.close();
    },
  };
}

/**
 * @param {ElectionOptions} options
 * @returns {Election}
 */
function electWithBroadcast(options) {
  const {
    name, BroadcastChannelImpl, onLead, onFollow, setTimer, clearTimer, now, random,
    heartbeatMs = 1000, leaseMs = 3000,
  } = options;
  const id = uniqueId(now);
  const channel = new BroadcastChannelImpl(`${name} election`);
  let leading = false;
  /** @type {string | null} */
  let leaderId = null;
  let heardAt = now();
  /** @type {unknown} */
  let timer = null;
  let closed = false;

  /** @param {number} ms */
  function schedule(ms) {
    if (timer !== null) clearTimer(timer);
    timer = setTimer(tick, Math.max(0, ms));
  }

  function announce() {
    channel.postMessage({ t: 'lead', id });
  }

  function tick() {
    timer = null;
    if (closed) return;
    if (leading) {
      announce();
      schedule(heartbeatMs);
    } else if (leaderId === null || now() - heardAt >= leaseMs) {
      leading = true;
      leaderId = id;
      announce();
      schedule(heartbeatMs);
      onLead();
    } else {
      schedule(leaseMs - (now() - heardAt));
    }
  }

  channel.onmessage = (/** @type {MessageEvent} */ event) => {
    const message = event.data;
    if (closed || !message || typeof message.id !== 'string') return;
    if (message.t === 'lead') {
      if (leading && message.id > id) {
        announce(); // two leaders: the smaller id stays
        return;
      }
      if (leading) {
        leading = false;
        onFollow();
      }
      leaderId = message.id;
      heardAt = now();
      schedule(leaseMs);
    } else if (message.t === 'who' && leading) {
      announce();
    } else if (message.t === 'bye' && message.id === leaderId) {
      // The leader left cleanly: take over now, not after the lease. A random pause lets
      // the first claimant's announcement stop the others most of the time.
      leaderId = null;
      schedule(random() * 100);
    }
  };
  channel.postMessage({ t: 'who', id });
  schedule(Math.min(250, leaseMs)); // a leader answers `who` well within this

  return {
    kind: 'broadcast',
    close() {
      closed = true;
      if (timer !== null) clearTimer(timer);
      if (leading) channel.postMessage({ t: 'bye', id });
      channel.close();
    },
  };
}
