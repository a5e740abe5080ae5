/**
 * Network namespaces, named the way `ip netns` names them (bind mounts under /run/netns), or
 * given as a path to a namespace file: `/proc/PID/ns/net` (a container's process), a bind mount
 * such as `/run/netns/X` or `/var/run/docker/netns/…`. A value starting with `/` is a path.
 *
 * setns() moves only the calling thread, and koffi makes every libc call on Node's main thread,
 * so a namespace switch here affects exactly the syscalls made (and the sockets created) until
 * the switch back. That is why `inNetns` is synchronous: an `await` inside it would hand the
 * event loop, still in the foreign namespace, to unrelated code.
 */
import { closeSync, existsSync, openSync, readdirSync, statSync } from 'node:fs';
import { NetmangleError, NotFoundError } from '../errors.js';
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

/** Whether `netns` is given as a path (`/proc/PID/ns/net`) rather than an `ip netns` name. */
export function isNetnsPath(netns: string): boolean {
  return netns.startsWith('/');
}

/** The file to open for a namespace name or path. */
function netnsFile(netns: string): string {
  return isNetnsPath(netns) ? netns : `${NETNS_RUN_DIR}/${netns}`;
}

function checkName(name: string): void {
  if (isNetnsPath(name)) {
    if (name.includes('\0')) throw new NetmangleError(`invalid network namespace path "${name.replace(/\0/g, '\\0')}"`);
    return;
  }
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new NetmangleError(`invalid network namespace name "${name}"`, {
      hint: 'use a name as `ip netns list` prints it',
    });
  }
}

function missingNetns(name: string): NetmangleError {
  if (isNetnsPath(name)) {
    return new NotFoundError(`no network namespace at ${name}`, {
      hint: 'give /proc/PID/ns/net of a running process, or a bind mount such as /run/netns/NAME',
    });
  }
  return new NotFoundError(`no network namespace ${name} (see \`ip netns list\`)`, {
    hint: `create it with \`ip netns add ${name}\`, or leave out the namespace to use the current one`,
  });
}

/** Opens /run/netns/NAME (or the path) read-only; a missing namespace becomes a NetmangleError. */
function openNetns(name: string): number {
  checkName(name);
  try {
    return openSync(netnsFile(name), 'r');
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
        : name === 'EINVAL' ? `${what} is not a network namespace${isNetnsPath(what) ? '' : ' (see `ip netns list`)'}` : undefined,
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

/** True when `ip netns` knows a namespace called `name` (or, for a path, when the file exists). */
export function netnsExists(name: string): boolean {
  checkName(name);
  return existsSync(netnsFile(name));
}

/**
 * The words that run a command inside `netns`: `ip netns exec NAME` for a name (which also
 * remounts /sys for it), `nsenter --net=PATH` for a path, nothing for the current namespace.
 */
export function netnsCommandPrefix(netns: string | undefined): string[] {
  if (netns === undefined) return [];
  checkName(netns);
  return isNetnsPath(netns) ? ['nsenter', `--net=${netns}`] : ['ip', 'netns', 'exec', netns];
}

/** `ip` with its arguments, run in `netns` (`ip -n NAME`, which knows names only, or through nsenter). */
export function ipCommand(netns: string | undefined, args: readonly string[]): string[] {
  if (netns === undefined) return ['ip', ...args];
  return isNetnsPath(netns) ? [...netnsCommandPrefix(netns), 'ip', ...args] : ['ip', '-n', netns, ...args];
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
