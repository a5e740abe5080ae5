/**
 * What the BPF object wrappers (programs, maps, links) share: an owned file descriptor that is
 * closed exactly once, and the object-name rules the kernel enforces.
 */
import { readFileSync } from 'node:fs';
import { libc } from './ffi.js';
import { OBJ_NAME_LEN } from './sys.js';

/** Closes `fd` if it is a valid descriptor; errors are ignored (nothing useful to do on close). */
export function closeFd(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

/**
 * The kernel accepts object names of at most 15 characters from [A-Za-z0-9_.]; anything else
 * makes the whole call fail with EINVAL, so names are cleaned here instead.
 */
export function sanitizeObjectName(name: string | undefined): string {
  if (!name) return '';
  return name.replace(/[^A-Za-z0-9_.]/g, '_').slice(0, OBJ_NAME_LEN - 1);
}

let possibleCpuCount: number | undefined;

/**
 * Number of possible CPUs (not online ones): per-CPU maps hold one value slot for each.
 * Read from /sys/devices/system/cpu/possible, e.g. "0-3" or "0,2-5" (highest index + 1).
 */
export function possibleCpus(): number {
  if (possibleCpuCount !== undefined) return possibleCpuCount;
  const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
  let highest = -1;
  for (const part of text.split(',')) {
    const [a, b] = part.split('-');
    const hi = Number(b ?? a);
    if (Number.isInteger(hi) && hi > highest) highest = hi;
  }
  if (highest < 0) throw new Error(`cannot parse /sys/devices/system/cpu/possible: "${text}"`);
  possibleCpuCount = highest + 1;
  return possibleCpuCount;
}
