export { createRealtimeClient, STATES } from './client.js';
export { createBackoff } from './backoff.js';
export { CLOSE_CODE, CLOSE_CODES } from './closeCodes.js';
export { reconnectPolicy, closeCodeName } from './reconnectPolicy.js';
export { createSharedStore } from './store.js';
export { MESSAGE_TYPE } from './messages.js';
