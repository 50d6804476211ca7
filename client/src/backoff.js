// Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base * 2^n)).
// Full jitter spreads thousands of clients that lost the same server over the whole window
// instead of having them return in synchronized waves.

export function createBackoff({ baseMs = 500, capMs = 30000, random = Math.random } = {}) {
  let attempt = 0;
  return {
    next() {
      const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
      attempt += 1;
      return Math.floor(random() * ceiling);
    },
    reset() {
      attempt = 0;
    },
    get attempt() {
      return attempt;
    },
  };
}
