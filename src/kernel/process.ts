/**
 * Processes as the kernel knows them, for watching an owner: a pid alone can be reused by an
 * unrelated process after the owner dies, so an owner is named by its pid and its start time
 * (field 22 of /proc/PID/stat, clock ticks since boot), and watched through a pidfd, which
 * refers to exactly one process and becomes readable when it exits (pidfd_open, Linux 5.3).
 */
import { readFileSync, statSync } from 'node:fs';
import { closeFd } from './fd.js';
import { errno, errnoName, libc, syscall, SYS } from './ffi.js';

/** A process by pid and start time: the pair is unique for the life of a boot. */
export interface ProcessRef {
  pid: number;
  startTime: number;
}

/** The start time of `pid` (clock ticks after boot), or undefined when there is no such process. */
export function processStartTime(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): a zombie has exited, whatever its parent has not reaped yet.
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  const start = Number(fields[19]);
  return Number.isFinite(start) ? start : undefined;
}

/** This process, as others will name it. */
export function selfRef(): ProcessRef {
  return { pid: process.pid, startTime: processStartTime(process.pid) ?? 0 };
}

/** Whether the process `ref` names is still running (not exited, not a reused pid). */
export function processAlive(ref: ProcessRef): boolean {
  return processStartTime(ref.pid) === ref.startTime;
}

const ESRCH = 3;
const EINTR = 4;
const POLLIN = 1;

/**
 * A pidfd on the process `ref` names (pidfd_open, 5.3+), or undefined when it has exited
 * already or its pid now belongs to another process.
 */
export function openPidfd(ref: ProcessRef): number | undefined {
  const fd = syscall(SYS.pidfd_open, ref.pid, 0);
  if (fd < 0) {
    const e = errno();
    if (e === ESRCH) return undefined;
    throw new Error(`pidfd_open(${ref.pid}): ${errnoName(e)}`);
  }
  // Opened after a possible reuse of the pid: the pidfd then watches the wrong process.
  if (!processAlive(ref)) {
    closeFd(fd);
    return undefined;
  }
  return fd;
}

/**
 * Blocks the calling thread until the process behind `pidfd` has exited, then closes the fd.
 * Nothing else runs meanwhile: for a process whose only job is to wait.
 */
export function waitForExit(pidfd: number): void {
  try {
    const pollfd = Buffer.alloc(8);
    pollfd.writeInt32LE(pidfd, 0);
    pollfd.writeInt16LE(POLLIN, 4);
    for (;;) {
      const n = libc.ppoll(pollfd, 1, null, null);
      if (n > 0) return;
      if (n < 0 && errno() !== EINTR) throw new Error(`ppoll on a pidfd: ${errnoName(errno())}`);
    }
  } finally {
    closeFd(pidfd);
  }
}

/**
 * The inode of a network namespace: of /run/netns/NAME, of a namespace file given as a path
 * (`/proc/PID/ns/net`), or of this thread's own when `name` is undefined. Two namespaces never
 * share one while both exist; a name can be reused for another, and
 * (on some kernels, 6.1 among them) so can the inode number of a namespace that is gone.
 */
export function netnsInode(name: string | undefined): number | undefined {
  const file = name === undefined ? '/proc/thread-self/ns/net' : name.startsWith('/') ? name : `/run/netns/${name}`;
  try {
    return statSync(file).ino;
  } catch {
    return undefined;
  }
}
