/**
 * The bpf(2) system call: command numbers, object type numbers, `union bpf_attr` encoding and
 * the errors every failed call turns into. This is the only file that knows attribute offsets;
 * map.ts, program.ts, link.ts, bpffs.ts, info.ts and probe.ts build their calls from here.
 *
 * Offsets follow include/uapi/linux/bpf.h. The kernel accepts an attr shorter than its own
 * union (it zero-fills the rest) and a longer one if the extra bytes are zero, so every attr
 * here is a zeroed buffer of ATTR_SIZE bytes with only the fields a command needs.
 */
import { getSystemErrorMap } from 'node:util';
import { NetmangleError } from '../errors.js';
import { SYS, errno as lastErrno, errnoName as libcErrnoName, koffi, syscall } from './ffi.js';

/** enum bpf_cmd */
export const Cmd = {
  MAP_CREATE: 0,
  MAP_LOOKUP_ELEM: 1,
  MAP_UPDATE_ELEM: 2,
  MAP_DELETE_ELEM: 3,
  MAP_GET_NEXT_KEY: 4,
  PROG_LOAD: 5,
  OBJ_PIN: 6,
  OBJ_GET: 7,
  PROG_ATTACH: 8,
  PROG_DETACH: 9,
  PROG_TEST_RUN: 10,
  PROG_GET_NEXT_ID: 11,
  MAP_GET_NEXT_ID: 12,
  PROG_GET_FD_BY_ID: 13,
  MAP_GET_FD_BY_ID: 14,
  OBJ_GET_INFO_BY_FD: 15,
  PROG_QUERY: 16,
  BTF_LOAD: 18,
  LINK_CREATE: 28,
  LINK_UPDATE: 29,
  LINK_GET_FD_BY_ID: 30,
  LINK_GET_NEXT_ID: 31,
  ENABLE_STATS: 32,
  LINK_DETACH: 34,
} as const;

/** enum bpf_prog_type, by the names `bpftool` prints. */
export const PROG_TYPES = {
  socket_filter: 1,
  kprobe: 2,
  sched_cls: 3,
  sched_act: 4,
  tracepoint: 5,
  xdp: 6,
  perf_event: 7,
  cgroup_skb: 8,
  cgroup_sock: 9,
  lwt_in: 10,
  lwt_out: 11,
  lwt_xmit: 12,
  sock_ops: 13,
  sk_skb: 14,
  cgroup_device: 15,
  sk_msg: 16,
  raw_tracepoint: 17,
  cgroup_sock_addr: 18,
  lwt_seg6local: 19,
  lirc_mode2: 20,
  sk_reuseport: 21,
  flow_dissector: 22,
  cgroup_sysctl: 23,
  raw_tracepoint_writable: 24,
  cgroup_sockopt: 25,
  tracing: 26,
  struct_ops: 27,
  ext: 28,
  lsm: 29,
  sk_lookup: 30,
  syscall: 31,
  netfilter: 32,
} as const;
export type ProgramType = keyof typeof PROG_TYPES;

/** enum bpf_map_type (the ones netmangle creates, plus a few it may meet while listing). */
export const MAP_TYPES = {
  hash: 1,
  array: 2,
  prog_array: 3,
  perf_event_array: 4,
  percpu_hash: 5,
  percpu_array: 6,
  lru_hash: 9,
  lru_percpu_hash: 10,
  lpm_trie: 11,
  devmap: 14,
  cpumap: 16,
  xskmap: 17,
  queue: 22,
  stack: 23,
  devmap_hash: 25,
  ringbuf: 27,
} as const;
export type MapType = keyof typeof MAP_TYPES;

/** enum bpf_attach_type (the network ones; others print as numbers). */
export const ATTACH_TYPES = {
  cgroup_inet_ingress: 0,
  cgroup_inet_egress: 1,
  flow_dissector: 17,
  xdp_devmap: 33,
  xdp_cpumap: 35,
  sk_lookup: 36,
  xdp: 37,
  netfilter: 45,
  tcx_ingress: 46,
  tcx_egress: 47,
  netkit_primary: 54,
  netkit_peer: 55,
} as const;
export type AttachType = keyof typeof ATTACH_TYPES;

/** enum bpf_link_type */
export const LINK_TYPES = {
  unspec: 0,
  raw_tracepoint: 1,
  tracing: 2,
  cgroup: 3,
  iter: 4,
  netns: 5,
  xdp: 6,
  perf_event: 7,
  kprobe_multi: 8,
  struct_ops: 9,
  netfilter: 10,
  tcx: 11,
  uprobe_multi: 12,
  netkit: 13,
  sockmap: 14,
} as const;
export type LinkType = keyof typeof LINK_TYPES;

/** Reverse lookup: the name of `value` in one of the tables above, or the number as text. */
export function nameOf(table: Readonly<Record<string, number>>, value: number): string {
  for (const [name, v] of Object.entries(table)) if (v === value) return name;
  return String(value);
}

/** Flags used across commands. */
export const Flags = {
  // BPF_MAP_UPDATE_ELEM
  ANY: 0,
  NOEXIST: 1,
  EXIST: 2,
  // BPF_MAP_CREATE
  NO_PREALLOC: 1 << 0,
  // mprog (tcx) attach position; BPF_LINK_UPDATE's BPF_F_REPLACE has the same value
  REPLACE: 1 << 2,
  BEFORE: 1 << 3,
  AFTER: 1 << 4,
  ID: 1 << 5,
  LINK: 1 << 13,
  // XDP attach modes (link_create.flags for BPF_XDP)
  XDP_SKB_MODE: 1 << 1,
  XDP_DRV_MODE: 1 << 2,
  XDP_HW_MODE: 1 << 3,
} as const;

export const OBJ_NAME_LEN = 16;
/** Large enough for every command netmangle issues (the PROG_LOAD part ends at 152). */
export const ATTR_SIZE = 160;

/** Byte offsets inside `union bpf_attr`, one block per command. */
export const Off = {
  mapCreate: { mapType: 0, keySize: 4, valueSize: 8, maxEntries: 12, mapFlags: 16, innerMapFd: 20, numaNode: 24, mapName: 28, mapIfindex: 44 },
  mapElem: { mapFd: 0, key: 8, value: 16, nextKey: 16, flags: 24 },
  progLoad: {
    progType: 0, insnCnt: 4, insns: 8, license: 16, logLevel: 24, logSize: 28, logBuf: 32, kernVersion: 40,
    progFlags: 44, progName: 48, progIfindex: 64, expectedAttachType: 68, fdArray: 120, logTrueSize: 140,
  },
  obj: { pathname: 0, bpfFd: 8, fileFlags: 12 },
  test: {
    progFd: 0, retval: 4, dataSizeIn: 8, dataSizeOut: 12, dataIn: 16, dataOut: 24, repeat: 32, duration: 36,
    ctxSizeIn: 40, ctxSizeOut: 44, ctxIn: 48, ctxOut: 56, flags: 64, cpu: 68, batchSize: 72,
  },
  getId: { startId: 0, id: 0, nextId: 4, openFlags: 8 },
  info: { bpfFd: 0, infoLen: 4, info: 8 },
  query: { targetFd: 0, targetIfindex: 0, attachType: 4, queryFlags: 8, attachFlags: 12, progIds: 16, count: 24, progAttachFlags: 32, linkIds: 40, linkAttachFlags: 48, revision: 56 },
  btfLoad: { btf: 0, logBuf: 8, size: 16, logSize: 20, logLevel: 24, logTrueSize: 28 },
  linkCreate: { progFd: 0, targetFd: 4, targetIfindex: 4, attachType: 8, flags: 12, relativeFd: 16, relativeId: 16, expectedRevision: 24 },
  linkDetach: { linkFd: 0 },
  linkUpdate: { linkFd: 0, newProgFd: 4, flags: 8, oldProgFd: 12 },
  enableStats: { type: 0 },
} as const;

/**
 * A zeroed `union bpf_attr` with typed setters. Buffers whose addresses go into the attr are
 * kept in `refs` so that they stay alive (and unmoved) until the call returns.
 */
export class Attr {
  readonly buf: Buffer;
  private readonly refs: Buffer[] = [];
  constructor(size = ATTR_SIZE) {
    this.buf = Buffer.alloc(size);
  }
  u32(off: number, value: number): this {
    this.buf.writeUInt32LE(value >>> 0, off);
    return this;
  }
  s32(off: number, value: number): this {
    this.buf.writeInt32LE(value | 0, off);
    return this;
  }
  u64(off: number, value: bigint | number): this {
    this.buf.writeBigUInt64LE(BigInt.asUintN(64, BigInt(value)), off);
    return this;
  }
  /** Stores the address of `data` (or 0 for null). */
  ptr(off: number, data: Buffer | null): this {
    if (data === null || data.length === 0) return this.u64(off, 0n);
    this.refs.push(data);
    return this.u64(off, addressOf(data));
  }
  /** A NUL-terminated string, truncated to `max - 1` bytes. */
  str(off: number, value: string, max: number): this {
    const bytes = Buffer.from(value, 'utf8').subarray(0, max - 1);
    bytes.copy(this.buf, off);
    return this;
  }
  getU32(off: number): number {
    return this.buf.readUInt32LE(off);
  }
  getU64(off: number): bigint {
    return this.buf.readBigUInt64LE(off);
  }
}

/** The address of a Buffer's first byte, for pointer fields. */
export function addressOf(data: Buffer): bigint {
  return BigInt(koffi().address(data) as bigint | number);
}

/** A C string in its own buffer. */
export function cString(value: string): Buffer {
  return Buffer.concat([Buffer.from(value, 'utf8'), Buffer.alloc(1)]);
}

/**
 * Calls bpf(cmd, attr, size). Returns the result (>= 0) or the negated errno, for callers
 * that decide themselves what a failure means (probes, ENOENT at the end of an iteration).
 */
export function bpfTry(cmd: number, attr: Attr): number {
  const ret = syscall(SYS.bpf, cmd, attr.buf, attr.buf.length);
  if (ret >= 0) return ret;
  const e = lastErrno();
  return e > 0 ? -e : -1;
}

/** Calls bpf() and throws a BpfError naming `operation` and `object` when it fails. */
export function bpfCall(cmd: number, attr: Attr, operation: string, object: string): number {
  for (let attempt = 0; ; attempt++) {
    const ret = bpfTry(cmd, attr);
    if (ret >= 0) return ret;
    // Interrupted calls (and PROG_LOAD's transient EAGAIN) are worth a few retries.
    if ((ret === -EINTR || ret === -EAGAIN) && attempt < 5) continue;
    throw new BpfError(operation, object, -ret);
  }
}

export const EPERM = 1, ENOENT = 2, EINTR = 4, E2BIG = 7, EBADF = 9, EAGAIN = 11, ENOMEM = 12, EACCES = 13,
  EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19, EINVAL = 22, ENOSPC = 28, ERANGE = 34, ENOSYS = 38,
  EOPNOTSUPP = 95, ENOTSUPP = 524;

/** E.g. 16 → "EBUSY"; also knows the kernel-internal ENOTSUPP (524) that bpf() leaks. */
export function errnoName(code: number): string {
  if (code === ENOTSUPP) return 'ENOTSUPP';
  return libcErrnoName(code);
}

function errnoText(code: number): string {
  if (code === ENOTSUPP) return 'operation not supported';
  return getSystemErrorMap().get(-code)?.[1] ?? 'unknown error';
}

/** What a user can do about each errno a bpf() call returns. */
function hintFor(code: number, operation: string): string | undefined {
  switch (code) {
    case EPERM:
      return 'this needs CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN to list objects): run netmangle as root';
    case EACCES:
      return 'the kernel refused access to this object: run as root, and check the pinned file\'s permissions';
    case ENODEV:
      return 'no such network interface in this namespace: check the name with `ip link` (inside the right namespace)';
    case EEXIST:
    case EBUSY:
      return 'another program already holds this hook: detach it first (`netmangle detach`, or `ip link set dev DEV xdp off`), or attach in another mode';
    case E2BIG:
      return 'too large for this kernel (program size, map size, or an attribute it does not know): make it smaller';
    case ENOMEM:
      return 'the kernel is out of memory for BPF objects, or RLIMIT_MEMLOCK is too low (`ulimit -l unlimited`)';
    case ENOENT:
      return operation.startsWith('open pinned') ? 'nothing is pinned at that path (see `ls /sys/fs/bpf/netmangle`)' : 'the object no longer exists';
    case EINVAL:
      return 'the kernel rejected the arguments; this kernel may lack the feature (run `netmangle probe`)';
    case EOPNOTSUPP:
    case ENOTSUPP:
      return 'not supported by this kernel or driver (run `netmangle probe`; for XDP try mode skb)';
    case ENOSYS:
      return 'this kernel has no bpf() system call (CONFIG_BPF_SYSCALL is off)';
    case EBADF:
      return 'a file descriptor was closed before use: this is a bug in the caller, please report it';
    default:
      return undefined;
  }
}

/**
 * A failed bpf() call: says what was being done, to what, and the errno, with a hint.
 * E.g. "attach XDP program 'mangle' to ifindex 3: EBUSY (resource busy or locked)".
 */
export class BpfError extends NetmangleError {
  readonly operation: string;
  readonly object: string;
  readonly errno: number;
  constructor(operation: string, object: string, errno: number, opts: { hint?: string; message?: string } = {}) {
    const what = object ? `${operation} ${object}` : operation;
    super(opts.message ?? `${what}: ${errnoName(errno)} (${errnoText(errno)})`, { hint: opts.hint ?? hintFor(errno, operation) });
    this.operation = operation;
    this.object = object;
    this.errno = errno;
  }
  get code(): string {
    return errnoName(this.errno);
  }
}

/** Reads a NUL-terminated string from a fixed-size field. */
export function readCString(buf: Buffer, off: number, max: number): string {
  const field = buf.subarray(off, off + max);
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

/**
 * BPF_OBJ_GET_INFO_BY_FD: the kernel's bpf_prog_info / bpf_map_info / bpf_link_info for `fd`,
 * in a zeroed buffer of `size` bytes (the kernel fills what it knows, up to `size`).
 * `fill` may point fields of the info at user buffers (e.g. map_ids) before the call; the
 * caller keeps those buffers referenced until this returns.
 */
export function objectInfo(fd: number, kind: string, size: number, fill?: (info: Buffer) => void): Buffer {
  const info = Buffer.alloc(size);
  const attr = new Attr();
  if (fill) fill(info);
  attr.u32(Off.info.bpfFd, fd).u32(Off.info.infoLen, size).ptr(Off.info.info, info);
  bpfCall(Cmd.OBJ_GET_INFO_BY_FD, attr, `read info of ${kind}`, `fd ${fd}`);
  return info;
}
