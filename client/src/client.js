// createRealtimeClient: the client every tab gets. By default the tabs of an origin share one
// WebSocket (shared.js); with `share: false`, or where tabs cannot talk to each other (no
// BroadcastChannel, not a page: Node, a worker), it is a connection of its own (socket.js).
import { createSharedClient } from './shared.js';
import { createSocketClient } from './socket.js';

/** @import { RealtimeClient, RealtimeClientOptions } from '../index.js' */

export { STATES } from './socket.js';

/**
 * @param {RealtimeClientOptions} [options]
 * @returns {RealtimeClient}
 */
export function createRealtimeClient(options = {}) {
  const {
    share = true,
    document: page = typeof document !== 'undefined' ? document : undefined,
    BroadcastChannelImpl = globalThis.BroadcastChannel,
  } = options;
  if (share && page && typeof BroadcastChannelImpl === 'function') return createSharedClient(options);
  return createSocketClient(options);
}
