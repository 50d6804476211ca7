// One tab's position in each channel, and the verdict on every update that reaches it.
//
// A shared connection can hand a tab the same update twice (the old leader's last messages
// still in flight while the new leader's replay starts from its own cursors), and a tab can
// miss some (frozen while its messages were dropped). Within an epoch `seq` grows by exactly
// one per channel (docs/protocol.md), so the cursor says which: "<epoch>:<seq>:<tag>" (the
// database's durable history) or "<epoch>:<seq>" (a relay that keeps its history in memory).

/** @import { Update } from '../index.js' */

/**
 * @param {unknown} cursor
 * @returns {{ epoch: string, seq: number } | null}
 */
function parse(cursor) {
  if (typeof cursor !== 'string') return null;
  const parts = cursor.split(':');
  if (parts.length !== 2 && parts.length !== 3) return null;
  const seq = Number(parts[1]);
  if (!parts[1] || !Number.isInteger(seq)) return null;
  return { epoch: parts[0], seq };
}

export function createCursorBook() {
  /** @type {Record<string, string>} */
  let cursors = {};
  return {
    /**
     * 'new' (deliver), 'duplicate' (already delivered: drop) or 'gap' (deliver, but updates
     * before it were missed: refetch). An update without a readable cursor is 'new'.
     * @param {Update} update
     * @returns {'new' | 'duplicate' | 'gap'}
     */
    accept(update) {
      const next = parse(update.cursor);
      if (!next || typeof update.channel !== 'string') return 'new';
      const last = parse(cursors[update.channel]);
      if (last && last.epoch === next.epoch && next.seq <= last.seq) return 'duplicate';
      cursors[update.channel] = update.cursor;
      return last && last.epoch === next.epoch && next.seq > last.seq + 1 ? 'gap' : 'new';
    },
    /**
     * Take positions from elsewhere: `replace` for a resync (a break: the given cursors are
     * the new start), otherwise only for channels this tab has no position for yet.
     * @param {Record<string, string | null> | undefined} given
     * @param {{ replace?: boolean }} [how]
     */
    adopt(given, { replace = false } = {}) {
      for (const [channel, cursor] of Object.entries(given || {})) {
        if (typeof cursor !== 'string') {
          if (replace) delete cursors[channel];
        } else if (replace || !(channel in cursors)) {
          cursors[channel] = cursor;
        }
      }
    },
    /** @returns {Record<string, string>} */
    snapshot() {
      return { ...cursors };
    },
    clear() {
      cursors = {};
    },
  };
}
