// The listener sets behind subscribe/onState/onResync/onError, shared by the tab's client
// (shared.js) and the connection (socket.js): one broken listener never starves the others,
// and its error is reported, to onError or else to the console.

/** @import { ConnectionState, ResyncInfo, StateEvent, Update } from '../index.js' */

/**
 * @typedef {{ update: [Update], state: [ConnectionState, StateEvent], resync: [ResyncInfo],
 *   error: [Error] }} Events
 */

export function createListeners() {
  /** @type {{ [K in keyof Events]: Set<(...args: Events[K]) => void> }} */
  const sets = { update: new Set(), state: new Set(), resync: new Set(), error: new Set() };

  /** @param {unknown} error */
  function reportError(error) {
    if (sets.error.size === 0) {
      // Nobody listens (the React hook does not): a subscriber's bug or a terminal close
      // must still be visible somewhere.
      console.error('relay client:', error);
      return;
    }
    const reported = error instanceof Error ? error : new Error(String(error));
    for (const listener of [...sets.error]) listener(reported);
  }

  /**
   * @template {keyof Events} K
   * @param {K} kind
   * @param {Events[K]} args
   */
  function emit(kind, ...args) {
    for (const listener of [...sets[kind]]) {
      try {
        /** @type {(...args: Events[K]) => void} */ (listener)(...args);
      } catch (error) {
        reportError(error);
      }
    }
  }

  /**
   * @template {keyof Events} K
   * @param {K} kind
   */
  function adder(kind) {
    /** @param {(...args: Events[K]) => void} callback */
    return (callback) => {
      sets[kind].add(callback);
      return () => {
        sets[kind].delete(callback);
      };
    };
  }

  return {
    emit,
    reportError,
    /** The client's public methods for adding listeners. */
    methods: {
      subscribe: adder('update'),
      onState: adder('state'),
      onResync: adder('resync'),
      onError: adder('error'),
    },
  };
}
