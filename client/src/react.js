// useWebSocketUpdates(callback) — the drop-in replacement for useRealtimeUpdates(callback).
// Every component on the page shares one connection; the hook returns
// { isConnected, subscriberCount } and calls `callback(update)` for each `update` message.
// All the logic is in store.js (tested without React); this file only wires it to React.
import { useEffect, useRef, useSyncExternalStore } from 'react';

import { createSharedStore } from './store.js';

/** @import { UseWebSocketUpdatesOptions } from '../react.js' */
/** @import { ConnectionStatus, Update } from '../index.js' */

const pageStore = createSharedStore();
// What the server renders (and what hydration starts from): no connection yet.
const SERVER_SNAPSHOT = Object.freeze({ isConnected: false, subscriberCount: 0 });
const serverSnapshot = () => SERVER_SNAPSHOT;

/**
 * @param {(update: Update) => void} callback
 * @param {UseWebSocketUpdatesOptions} [options]
 * @returns {ConnectionStatus}
 */
export function useWebSocketUpdates(callback, options = {}) {
  const store = options.store || pageStore;
  const callbackRef = useRef(callback);
  const resyncRef = useRef(options.onResync);
  // The latest callbacks, without resubscribing; updated after commit, never during render
  // (a render React throws away must not replace them).
  useEffect(() => {
    callbackRef.current = callback;
    resyncRef.current = options.onResync;
  });

  const status = useSyncExternalStore(store.watch, store.snapshot, serverSnapshot);

  useEffect(() => {
    const client = store.acquire(options.client);
    const unsubscribe = client.subscribe((update) => callbackRef.current?.(update));
    const offResync = client.onResync((info) => resyncRef.current?.(info));
    return () => {
      unsubscribe();
      offResync();
      store.release();
    };
    // One subscription per mounted component: options.client is read by the first one only.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [store]);

  return status;
}

export const useRealtimeUpdates = useWebSocketUpdates;
