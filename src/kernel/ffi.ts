/**
 * The thin layer between netmangle and libc, through koffi. Only src/kernel/ uses it.
 * Every call returns the raw result; `check()` turns -1 into a SyscallError carrying errno.
 * koffi runs these on the calling (main) thread, which matters for setns(): a namespace
 * switch affects exactly the syscalls this module makes until it switches back.
 */
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import type * as Koffi from 'koffi';

// koffi (a native addon, several ms to load) and libc are loaded at the first call, not when a
// command's code is loaded: `netmangle --help` holds every command, and makes no system call.
const requireHere = createRequire(import.meta.url);
let koffiModule: typeof Koffi | undefined;
let lib: Koffi.LibraryHandle | undefined;

/** koffi, loaded on first use. */
export function koffi(): typeof Koffi {
  return (koffiModule ??= requireHere('koffi') as typeof Koffi);
}

type Fn = (...args: unknown[]) => number;

/** A libc function bound (koffi.func) at its first call. */
function lazyFn(declaration: string): Fn {
  let fn: Fn | undefined;
  return (...args: unknown[]) => (fn ??= (lib ??= koffi().load('libc.so.6')).func(declaration) as unknown as Fn)(...args);
}

// Variadic so that each call names the argument types (bpf(2) has no libc wrapper).
const syscallFn = lazyFn('long syscall(long number, ...)');

export const libc = {
  socket: lazyFn('int socket(int domain, int type, int protocol)') as unknown as (d: number, t: number, p: number) => number,
  bind: lazyFn('int bind(int fd, void *addr, uint32_t len)') as unknown as (fd: number, addr: Buffer, len: number) => number,
  send: lazyFn('intptr_t send(int fd, void *buf, size_t len, int flags)') as unknown as (fd: number, buf: Buffer, len: number, flags: number) => number,
  recv: lazyFn('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)') as unknown as (fd: number, buf: Buffer, len: number, flags: number) => number,
  setsockopt: lazyFn('int setsockopt(int fd, int level, int name, void *val, uint32_t len)') as unknown as (fd: number, level: number, name: number, val: Buffer, len: number) => number,
  close: lazyFn('int close(int fd)') as unknown as (fd: number) => number,
  setns: lazyFn('int setns(int fd, int nstype)') as unknown as (fd: number, nstype: number) => number,
  mount: lazyFn('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)') as unknown as (
    source: string, target: string, fstype: string, flags: number, data: null) => number,
  /** ioctl(2) with a pointer argument (TUNSETIFF and its kind). */
  ioctl: lazyFn('int ioctl(int fd, unsigned long request, void *arg)') as unknown as (fd: number, request: number, arg: Buffer) => number,
  eventfd: lazyFn('int eventfd(unsigned int initval, int flags)') as unknown as (initval: number, flags: number) => number,
  /** ppoll(fds, nfds, timeout timespec or null for none, sigmask null). */
  ppoll: lazyFn('int ppoll(_Inout_ uint8_t *fds, unsigned long nfds, const uint8_t *ts, const void *sigmask)') as unknown as (fds: Buffer, nfds: number, ts: Buffer | null, sigmask: null) => number,
  ifNameToIndex: lazyFn('unsigned int if_nametoindex(const char *name)') as unknown as (name: string) => number,
  ifIndexToName: lazyFn('char *if_indextoname(unsigned int index, _Out_ char *buf)') as unknown as (index: number, buf: Buffer) => unknown,
};

/** Raw syscall(2) with every argument passed as a 64-bit integer or a pointer (Buffer). */
export function syscall(nr: number, ...args: Array<number | bigint | Buffer | null>): number {
  const typed: unknown[] = [nr];
  for (const a of args) {
    if (a === null || Buffer.isBuffer(a)) typed.push('void *', a);
    else typed.push('long', a);
  }
  return Number(syscallFn(...typed));
}

export function errno(): number {
  return koffi().errno();
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** E.g. 1 → "EPERM". */
export function errnoName(code: number): string {
  return errnoNames.get(code) ?? `errno ${code}`;
}

/** A failed system call: the operation, the errno and its name. */
export class SyscallError extends Error {
  constructor(readonly operation: string, readonly errno: number) {
    super(`${operation}: ${errnoName(errno)}`);
    this.name = 'SyscallError';
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

/** Throws SyscallError when `ret` is negative, else returns it. */
export function check(ret: number, operation: string): number {
  if (ret < 0) throw new SyscallError(operation, errno());
  return ret;
}

/** Syscall numbers this project uses, per architecture. */
export const SYS = process.arch === 'arm64'
  ? { bpf: 280, setns: 268, pidfd_open: 434 }
  : { bpf: 321, setns: 308, pidfd_open: 434 };
