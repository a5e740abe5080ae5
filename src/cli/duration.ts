import { UsageError } from '../errors.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "500ms", "10s", "5m", "1h", "1m30s" → milliseconds. */
export function parseDuration(text: string, option = 'duration'): number {
  const parts = [...text.trim().matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
  const joined = parts.map((p) => p[0]).join('');
  if (parts.length === 0 || joined !== text.trim()) {
    throw new UsageError(`${option}: "${text}" is not a duration`, { hint: 'write it like 500ms, 10s, 5m, 1h or 1m30s' });
  }
  return parts.reduce((sum, p) => sum + Number(p[1]) * UNITS[p[2]!]!, 0);
}
