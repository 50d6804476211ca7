// One shared client per page, counted by its mounted subscribers: the React hook's engine,
// kept framework-free so that it can be tested without React.
import { createRealtimeClient } from './client.js';

export function createSharedStore(factory = createRealtimeClient, { graceMs = 1000 } = {}) {
  let client = null;
  let subscribers = 0;
  let closeTimer = null;
  const watchers = new Set();

  function snapshot() {
    return {
      isConnected: client !== null && client.state === 'connected',
      subscriberCount: subscribers,
    };
  }

  function notify() {
    const value = snapshot();
    for (const watcher of [...watchers]) watcher(value);
  }

  return {
    acquire(options) {
      if (closeTimer !== null) {
        clearTimeout(closeTimer);
        closeTimer = null;
      }
      if (client === null) {
        client = factory(options);
        client.onState(notify);
        client.connect();
      }
      subscribers += 1;
      notify();
      return client;
    },
    release() {
      subscribers = Math.max(0, subscribers - 1);
      notify();
      if (subscribers === 0 && client !== null) {
        // A grace period: React remounts (route changes, StrictMode) must not reconnect.
        closeTimer = setTimeout(() => {
          closeTimer = null;
          if (subscribers === 0 && client !== null) {
            client.close();
            client = null;
            notify();
          }
        }, graceMs);
      }
    },
    watch(watcher) {
      watchers.add(watcher);
      return () => watchers.delete(watcher);
    },
    snapshot,
    get client() {
      return client;
    },
  };
}
