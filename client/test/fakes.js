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
        now = due[1].at;
        due[1].fn();
        await flush();
      }
      now = target;
      await flush();
    },
    get pending() {
      return [...timers.values()].map((t) => t.at - now);
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
