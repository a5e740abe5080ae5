/** `--priority N` of run and load: a cls_bpf filter priority. */
import { UsageError } from '../errors.js';

/** 1..65535 (lower runs first), or undefined when the option was not given. */
export function parsePriority(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1 || n > 0xffff) throw new UsageError(`--priority ${text}: must be an integer from 1 to 65535`);
  return n;
}
