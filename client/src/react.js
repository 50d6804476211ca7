// useWebSocketUpdates(callback) — the drop-in replacement for useRealtimeUpdates(callback).
// Every component on the page shares one connection; the hook returns
// { isConnected, subscriberCount } and calls `callback(update)` for each `update` message.
import { useEffect, useRef, useState } from 'react';

import { createSharedStore } from './store.js';

const pageStore = createSharedStore();

export function useWebSocketUpdates(callback, options = {}) {
  const callbackRef = useRef(callback);
  callbackRef.current = callback;
  const resyncRef = useRef(options.onResync);
  resyncRef.current = options.onResync;
  const store = options.store || pageStore;
  const [status, setStatus] = useState(() => store.snapshot());

  useEffect(() => {
    const stopWatching = store.watch(setStatus);
    const client = store.acquire(options.client);
    const unsubscribe = client.subscribe((update) => callbackRef.current?.(update));
    const offResync = client.onResync((info) => resyncRef.current?.(info));
    setStatus(store.snapshot());
    return () => {
      unsubscribe();
      offResync();
      stopWatching();
      store.release();
    };
    // One subscription per mounted component; the latest callback is read through a ref.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [store]);

  return status;
}

export const useRealtimeUpdates = useWebSocketUpdates;
