/**
 * Network namespaces named the way `ip netns` names them (bind mounts under /run/netns).
 *
 * setns() moves only the calling thread, and koffi makes every libc call on Node's main thread,
 * so a namespace switch here affects exactly the syscalls made (and the sockets created) until
 * the switch back. That is why `inNetns` is synchronous: an `await` inside it would hand the
 * event loop, still in the foreign namespace, to unrelated code.
 */
import { closeSync, existsSync, openSync, readdirSync, statSync } from 'node:fs';
import { NetmangleError } from '../errors.js';
import { printable } from '../printable.js';
import { errno, errnoName, libc } from './ffi.js';

/** CLONE_NEWNET from <linux/sched.h>: setns() checks the fd really is a network namespace. */
const CLONE_NEWNET = 0x40000000;

export const NETNS_RUN_DIR = '/run/netns';

/** The namespace this process started in, opened once and kept for switching back. */
let originalNetnsFd: number | undefined;
/**
 * The fd of the namespace the thread is in right now by our doing (the original one when no
 * `inNetns` is running). Nested `inNetns` calls restore to this, not to the original.
 */
let currentNetnsFd: number | undefined;

function originalFd(): number {
  if (originalNetnsFd === undefined) {
    originalNetnsFd = openSync('/proc/self/ns/net', 'r');
    currentNetnsFd = originalNetnsFd;
  }
  return originalNetnsFd;
}

function checkName(name: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new NetmangleError(`invalid network namespace name "${name}"`, {
      hint: 'use a name as `ip netns list` prints it',
    });
  }
}

function missingNetns(name: string): NetmangleError {
  return new NetmangleError(`no network namespace ${name} (see \`ip netns list\`)`, {
    hint: `create it with \`ip netns add ${name}\`, or leave out the namespace to use the current one`,
  });
}

/** Opens /run/netns/NAME read-only; a missing namespace becomes a NetmangleError. */
function openNetns(name: string): number {
  checkName(name);
  try {
    return openSync(`${NETNS_RUN_DIR}/${name}`, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw missingNetns(name);
    if (code === 'EACCES' || code === 'EPERM') {
      throw new NetmangleError(`cannot open network namespace ${name}: ${code}`, { hint: 'run netmangle as root' });
    }
    throw err;
  }
}

function switchTo(fd: number, what: string): void {
  if (libc.setns(fd, CLONE_NEWNET) < 0) {
    const e = errno();
    const name = errnoName(e);
    throw new NetmangleError(`cannot enter network namespace ${what}: ${name}`, {
      hint: name === 'EPERM' ? 'entering a namespace needs CAP_SYS_ADMIN: run netmangle as root'
        : name === 'EINVAL' ? `${what} is not a network namespace (see \`ip netns list\`)` : undefined,
    });
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

/**
 * Runs `fn` with the calling thread inside network namespace `name` (as in `ip netns`), then
 * switches back, also when `fn` throws. With `name` undefined, runs `fn` where we are.
 *
 * `fn` must be synchronous: an async function (or any returned promise) is refused, because
 * its continuation would run after the switch back, in the wrong namespace.
 */
export function inNetns<T>(name: string | undefined, fn: () => T): T {
  if (fn.constructor?.name === 'AsyncFunction') {
    throw new TypeError('inNetns: fn must be synchronous (an await would run in the wrong namespace)');
  }
  if (name === undefined) return refusePromise(fn());

  const previousFd = currentNetnsFd ?? originalFd();
  const targetFd = openNetns(name);
  try {
    switchTo(targetFd, name);
    currentNetnsFd = targetFd;
    try {
      return refusePromise(fn());
    } finally {
      currentNetnsFd = previousFd;
      if (libc.setns(previousFd, CLONE_NEWNET) < 0) {
        // Carrying on would run every later syscall in the wrong namespace.
        const why = errnoName(errno());
        process.stderr.write(`netmangle: cannot return from network namespace ${printable(name)}: ${why}; aborting\n`);
        process.abort();
      }
    }
  } finally {
    closeSync(targetFd);
  }
}

function refusePromise<T>(result: T): T {
  if (isPromiseLike(result)) {
    // Keep an eventual rejection from surfacing as an unhandled one; the caller gets this error.
    Promise.resolve(result).catch(() => {});
    throw new TypeError('inNetns: fn returned a promise; namespace-bound work must be synchronous');
  }
  return result;
}

/** True when `ip netns` knows a namespace called `name`. */
export function netnsExists(name: string): boolean {
  checkName(name);
  return existsSync(`${NETNS_RUN_DIR}/${name}`);
}

/** The names `ip netns list` shows (unsorted by creation; sorted by name here). */
export function listNetns(): string[] {
  let names: string[];
  try {
    names = readdirSync(NETNS_RUN_DIR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.filter((n) => {
    try {
      return statSync(`${NETNS_RUN_DIR}/${n}`).isFile();
    } catch {
      return false;
    }
  }).sort();
}

/** Throws the usual "no network namespace" error unless `name` is undefined or exists. */
export function requireNetns(name: string | undefined): void {
  if (name !== undefined && !netnsExists(name)) throw missingNetns(name);
}
