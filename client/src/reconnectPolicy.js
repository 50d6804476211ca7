// What to do when the server closes the connection, from the close-code table that the
// server defines (closeCodes.js is generated from relay/closecodes.py).
import { CLOSE_CODES } from './closeCodes.js';

const BY_CODE = new Map(CLOSE_CODES.map((entry) => [entry.code, entry]));

/** @import { CloseCode } from '../index.js' */

/**
 * 'yes': reconnect with backoff and resume; 'new-token': fetch a token first, then reconnect;
 * 'no': stop (terminal, or a client bug a retry would repeat). Codes the table does not know
 * (1006 abnormal closure, network errors, proxies) are transient: reconnect.
 * @param {number} code
 * @returns {CloseCode['reconnect']}
 */
export function reconnectPolicy(code) {
  const entry = BY_CODE.get(code);
  return entry ? entry.reconnect : 'yes';
}

/**
 * @param {number} code
 * @returns {string}
 */
export function closeCodeName(code) {
  const entry = BY_CODE.get(code);
  return entry ? entry.name : `CODE_${code}`;
}
