/**
 * The BPF filesystem: pinning programs, maps and links to paths so they outlive the process
 * that made them, and opening them again. netmangle keeps its pins under /sys/fs/bpf/netmangle.
 */
import { existsSync, mkdirSync, readlinkSync, statfsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { NetmangleError } from '../errors.js';
import { errno, errnoName as libcErrnoName, libc } from './ffi.js';
import { Attr, Cmd, Off, bpfCall, cString } from './sys.js';

export const BPFFS_ROOT = '/sys/fs/bpf';
export const NETMANGLE_PIN_ROOT = join(BPFFS_ROOT, 'netmangle');
const BPF_FS_MAGIC = 0xcafe4a11;

function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** Mounts bpffs at /sys/fs/bpf (or `root`) unless it is mounted there already. */
export function ensureBpffs(root: string = BPFFS_ROOT): void {
  if (isBpffs(root)) return;
  try {
    mkdirSync(root, { recursive: true });
  } catch (err) {
    throw new NetmangleError(`cannot create ${root} to mount the BPF filesystem: ${(err as Error).message}`, { hint: 'run as root' });
  }
  if (libc.mount('bpf', root, 'bpf', 0, null) !== 0) {
    const code = errno();
    throw new NetmangleError(`mount the BPF filesystem at ${root}: ${libcErrnoName(code)}`, {
      hint: code === 1 ? 'mounting needs CAP_SYS_ADMIN: run as root' : `mount it by hand: mount -t bpf bpf ${root}`,
    });
  }
}

/** mkdir -p of a directory below /sys/fs/bpf/netmangle (mounting bpffs first if needed); returns its path. */
export function pinDir(...parts: string[]): string {
  ensureBpffs();
  const dir = join(NETMANGLE_PIN_ROOT, ...parts);
  if (!dir.startsWith(NETMANGLE_PIN_ROOT)) throw new NetmangleError(`pin directory ${dir} is outside ${NETMANGLE_PIN_ROOT}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** The nearest directory at or above `dir` that exists. */
function existingAncestor(dir: string): string {
  let d = dir;
  while (!existsSync(d)) {
    const up = dirname(d);
    if (up === d) break;
    d = up;
  }
  return d;
}

/**
 * Pins the object behind `fd` at `path`. Missing parent directories are created when they
 * would be on a BPF filesystem; under /sys/fs/bpf the filesystem is mounted first if needed.
 */
export function pinObject(fd: number, path: string): void {
  const dir = dirname(path);
  if (!existsSync(dir)) {
    if ((dir + '/').startsWith(BPFFS_ROOT + '/')) ensureBpffs();
    if (isBpffs(existingAncestor(dir))) mkdirSync(dir, { recursive: true });
  }
  if (!isBpffs(dir)) {
    throw new NetmangleError(`cannot pin at ${path}: ${existingAncestor(dir)} is not on a BPF filesystem`, {
      hint: `pin below ${BPFFS_ROOT} (mounted with: mount -t bpf bpf ${BPFFS_ROOT})`,
    });
  }
  const name = cString(path);
  const attr = new Attr().ptr(Off.obj.pathname, name).u32(Off.obj.bpfFd, fd);
  bpfCall(Cmd.OBJ_PIN, attr, 'pin', `fd ${fd} at ${path}`);
}

export type PinnedKind = 'program' | 'map' | 'link' | 'btf' | 'unknown';

export interface PinnedObject {
  /** A new fd (the caller closes it, or wraps it with Program/BpfMap/Link.fromFd). */
  fd: number;
  kind: PinnedKind;
}

/** The kind of BPF object an fd refers to, from its anon-inode name in /proc/self/fd. */
export function fdKind(fd: number): PinnedKind {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'unknown';
  }
  if (target.includes('bpf-prog')) return 'program';
  if (target.includes('bpf-map')) return 'map';
  if (target.includes('bpf_link') || target.includes('bpf-link')) return 'link';
  if (target.includes('btf')) return 'btf';
  return 'unknown';
}

/** Opens what is pinned at `path` (BPF_OBJ_GET). */
export function getPinned(path: string, opts: { readOnly?: boolean } = {}): PinnedObject {
  const name = cString(path);
  const attr = new Attr().ptr(Off.obj.pathname, name).u32(Off.obj.fileFlags, opts.readOnly ? 1 << 3 : 0);
  const fd = bpfCall(Cmd.OBJ_GET, attr, 'open pinned object', `at ${path}`);
  return { fd, kind: fdKind(fd) };
}
