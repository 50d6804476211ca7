// Test doubles: a WebSocket that records what the client sends, and a manual clock.

export function createClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  return {
    setTimeout(fn, ms) {
      const id = nextId++;
      timers.set(id, { at: now + ms, fn });
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    async advance(ms) {
      const target = now + ms;
      for (;;) {
        const due = [...timers.entries()].filter(([, t]) => t.at <= target)
          .sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = Math.max(now, due[1].at);
        due[1].fn();
        await flush();
      }
      now = target;
      await flush();
    },
    get pending() {
      return [...timers.values()].map((t) => t.at - now);
    },
    now: () => now,
    // The page stalls (throttled, frozen, asleep): time passes and no timer runs; overdue
    // timers fire late at the next advance().
    sleep(ms) {
      now += ms;
    },
  };
}

export async function flush() {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

export function createFakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // test side
    serverOpen() {
      this.readyState = 1;
      this.onopen?.({});
    }
    serverSend(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { FakeWebSocket, sockets, get last() { return sockets[sockets.length - 1]; } };
}

export const CONNECTED = {
  type: 'connected',
  userId: '42',
  channels: ['user_Subscription_42', 'user_Usage_42'],
  cursors: { user_Subscription_42: 'e-1:0', user_Usage_42: 'e-2:0' },
  pingInterval: 20,
  resumed: false,
};

// Drains every pending microtask and promise chain (one macrotask turn).
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

// An unsigned JWT (relay would verify it; tabs only read whose it is).
export function jwtFor(userId, { exp = 4102444800, n = 0 } = {}) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ userId, exp, n })}.sig`;
}

// BroadcastChannel between the "tabs" of one test: structured clones, delivered a tick later.
export function createBroadcastHub() {
  const members = new Map();
  let posts = 0;
  class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      this.closed = false;
      if (!members.has(name)) members.set(name, new Set());
      members.get(name).add(this);
    }
    postMessage(data) {
      if (this.closed) throw new Error('InvalidStateError: channel closed');
      posts += 1;
      for (const other of members.get(this.name)) {
        if (other === this) continue;
        const copy = structuredClone(data);
        setImmediate(() => {
          if (!other.closed) other.onmessage?.({ data: copy });
        });
      }
    }
    close() {
      this.closed = true;
      members.get(this.name).delete(this);
    }
  }
  return {
    FakeBroadcastChannel,
    get posts() { return posts; },
    open(prefix) {
      return [...members.entries()].filter(([name, set]) => name.startsWith(prefix) && set.size)
        .map(([name]) => name);
    },
  };
}

// navigator.locks: exclusive locks granted in request order, released when the callback's
// promise settles; `signal` withdraws a request that waits.
export function createLockManager() {
  const queues = new Map();
  const held = new Map();
  function grant(name) {
    if (held.get(name)) return;
    const queue = queues.get(name) || [];
    const next = queue.shift();
    if (!next) return;
    held.set(name, next);
    Promise.resolve()
      .then(() => next.callback({ name, mode: 'exclusive' }))
      .then(next.resolve, next.reject)
      .finally(() => {
        held.delete(name);
        grant(name);
      });
  }
  return {
    request(name, options, callback) {
      return new Promise((resolve, reject) => {
        const entry = { callback, resolve, reject };
        if (!queues.has(name)) queues.set(name, []);
        queues.get(name).push(entry);
        options.signal?.addEventListener('abort', () => {
          const queue = queues.get(name);
          const i = queue.indexOf(entry);
          if (i >= 0) {
            queue.splice(i, 1);
            reject(new DOMException('aborted', 'AbortError'));
          }
        });
        grant(name);
      });
    },
    holder(name) {
      return held.has(name);
    },
  };
}
