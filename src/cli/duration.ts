import { UsageError } from '../errors.js';
import { MAX_RULE_DURATION_NS } from '../rules/limits.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * The longest duration an option takes: 365 days, the limit a rules file's `for:` and
 * `start-after:` have too (rules/load.ts checkDuration). The programs keep such windows in
 * nanoseconds of a 64-bit clock, so the limit is there for typos (597h meant as 59.7h?), not
 * for the kernel.
 */
export const MAX_DURATION_MS = MAX_RULE_DURATION_NS / 1e6;

/** "500ms", "10s", "5m", "1h", "1m30s" → milliseconds, more than 0 and at most MAX_DURATION_MS. */
export function parseDuration(text: string, option = 'duration'): number {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
  const joined = parts.map((p) => p[0]).join('');
  if (parts.length === 0 || joined !== text.trim()) {
    throw new UsageError(`${option}: "${text}" is not a duration`, { hint: 'write it like 500ms, 10s, 5m, 1h or 1m30s' });
  }
  const ms = parts.reduce((sum, p) => sum + Number(p[1]) * UNITS[p[2]!]!, 0);
  if (!(ms > 0)) throw new UsageError(`${option}: "${text}" is no time at all; give a duration longer than 0`);
  if (ms > MAX_DURATION_MS) {
    throw new UsageError(`${option}: "${text}" is longer than the limit of 365 days (8760h; docs/limits.md)`);
  }
  return ms;
}

/**
 * Node's timers fire at once (with a TimeoutOverflowWarning) beyond 2^31-1 ms, about 24.8
 * days: this one waits as long as asked by chaining shorter ones. Unref'd like the timers it
 * replaces (something else keeps the process alive). Returns a function that cancels it.
 */
export function setLongTimeout(fn: () => void, ms: number): () => void {
  const MAX_TIMER_MS = 2 ** 31 - 1;
  const end = performance.now() + ms;
  let timer: NodeJS.Timeout;
  const arm = (left: number): void => {
    timer = left <= MAX_TIMER_MS
      ? setTimeout(fn, left).unref()
      : setTimeout(() => arm(end - performance.now()), MAX_TIMER_MS).unref();
  };
  arm(ms);
  return () => clearTimeout(timer);
}
