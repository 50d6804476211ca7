// One shared client per page, counted by its mounted subscribers: the React hook's engine,
// kept framework-free so that it can be tested without React.
import { createRealtimeClient } from './client.js';

/**
 * @import { ConnectionStatus, RealtimeClient, RealtimeClientOptions, SharedStore } from '../index.js'
 */

/**
 * @param {(options?: RealtimeClientOptions) => RealtimeClient} [factory]
 * @param {{ graceMs?: number }} [options]
 * @returns {SharedStore}
 */
export function createSharedStore(factory = createRealtimeClient, { graceMs = 1000 } = {}) {
  /** @type {RealtimeClient | null} */
  let client = null;
  let subscribers = 0;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let closeTimer = null;
  /** @type {Set<(status: ConnectionStatus) => void>} */
  const watchers = new Set();
  /** @type {ConnectionStatus} */
  let current = { isConnected: false, subscriberCount: 0 };

  // The same object until something changes: useSyncExternalStore compares snapshots by
  // identity and would re-render forever on a fresh object per call.
  function snapshot() {
    const isConnected = client !== null && client.state === 'connected';
    if (current.isConnected !== isConnected || current.subscriberCount !== subscribers) {
      current = { isConnected, subscriberCount: subscribers };
    }
    return current;
  }

  function notify() {
    const value = snapshot();
    for (const watcher of [...watchers]) watcher(value);
  }

  // Stable function identities, so that React does not resubscribe on every render.
  /** @param {(status: ConnectionStatus) => void} watcher */
  function watch(watcher) {
    watchers.add(watcher);
    return () => watchers.delete(watcher);
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
      } else if (client.state === 'closed') {
        // Stopped by a terminal close (signed out, 4003): a component mounting later (after
        // sign-in, say) gets one fresh attempt — one per mount, never a loop.
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
    watch,
    snapshot,
    get client() {
      return client;
    },
  };
}
