/**
 * What the kernel says about loaded programs, maps and links: per-object info
 * (BPF_OBJ_GET_INFO_BY_FD), enumeration by id (BPF_*_GET_NEXT_ID, BPF_*_GET_FD_BY_ID), and
 * what is attached to a tcx hook (BPF_PROG_QUERY, which is also the only way to see tcx
 * programs with Debian's bpftool 7.1).
 *
 * Listing and opening by id need CAP_SYS_ADMIN. Ids are global; a query by ifindex is
 * answered in the calling thread's network namespace.
 */
import { NetmangleError } from '../errors.js';
import { closeFd } from './fd.js';
import {
  ATTACH_TYPES, Attr, BpfError, Cmd, ENOENT, ENOSPC, LINK_TYPES, MAP_TYPES, OBJ_NAME_LEN, Off, PROG_TYPES, addressOf, bpfCall,
  bpfTry, nameOf, objectInfo, readCString, type AttachType,
} from './sys.js';

export interface ProgramInfo {
  id: number;
  name: string;
  /** e.g. 'xdp', 'sched_cls' (or the number when unknown). */
  type: string;
  typeId: number;
  /** The kernel's SHA-1 based tag of the program, 16 hex digits (what `bpftool prog` shows). */
  tag: string;
  /** Bytes of JIT-compiled machine code (0 when the JIT is off). */
  jitedSize: number;
  /** Bytes of the program as the kernel rewrote it. */
  xlatedSize: number;
  /** Instructions (8-byte slots) of the program as the kernel rewrote it. */
  xlatedInsnCount: number;
  /** Nanoseconds since boot when it was loaded. */
  loadTimeNs: bigint;
  createdByUid: number;
  mapIds: number[];
  gplCompatible: boolean;
  /** Instructions the verifier processed (5.16+, else 0). */
  verifiedInsns: number;
  /** Only counted while BPF stats are on (sysctl kernel.bpf_stats_enabled=1 or BPF_ENABLE_STATS). */
  runTimeNs: bigint;
  runCount: bigint;
}

export interface MapInfo {
  id: number;
  name: string;
  type: string;
  typeId: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

export interface LinkInfo {
  id: number;
  /** e.g. 'xdp', 'tcx' (or the number when unknown). */
  type: string;
  typeId: number;
  progId: number;
  /** For xdp, tcx and netkit links. */
  ifindex?: number;
  /** e.g. 'tcx_ingress', 'tcx_egress', 'xdp'. */
  attachType?: string;
}

/** Something whose info can be read: an open fd (`{ fd }`, e.g. a Program or Link) or a kernel id. */
export type ObjectRef = number | { readonly fd: number };

const PROG_INFO_SIZE = 256;
const MAP_INFO_SIZE = 96;
const LINK_INFO_SIZE = 128;

function decodeProgramInfo(info: Buffer, mapIds: number[]): ProgramInfo {
  const typeId = info.readUInt32LE(0);
  const xlatedSize = info.readUInt32LE(20);
  return {
    id: info.readUInt32LE(4),
    name: readCString(info, 64, OBJ_NAME_LEN),
    type: nameOf(PROG_TYPES, typeId),
    typeId,
    tag: info.subarray(8, 16).toString('hex'),
    jitedSize: info.readUInt32LE(16),
    xlatedSize,
    xlatedInsnCount: xlatedSize / 8,
    loadTimeNs: info.readBigUInt64LE(40),
    createdByUid: info.readUInt32LE(48),
    mapIds,
    gplCompatible: (info.readUInt32LE(84) & 1) === 1,
    runTimeNs: info.readBigUInt64LE(192),
    runCount: info.readBigUInt64LE(200),
    verifiedInsns: info.readUInt32LE(216),
  };
}

/** Info of the program behind an open fd. */
export function programInfoByFd(fd: number): ProgramInfo {
  const first = objectInfo(fd, 'program', PROG_INFO_SIZE);
  const mapCount = first.readUInt32LE(52);
  if (mapCount === 0) return decodeProgramInfo(first, []);
  // A second call with a buffer for the map ids (the first one told how many there are).
  const ids = Buffer.alloc(mapCount * 4);
  const info = objectInfo(fd, 'program', PROG_INFO_SIZE, (b) => {
    b.writeUInt32LE(mapCount, 52);
    b.writeBigUInt64LE(addressOf(ids), 56);
  });
  const n = Math.min(mapCount, info.readUInt32LE(52));
  const mapIds: number[] = [];
  for (let i = 0; i < n; i++) mapIds.push(ids.readUInt32LE(i * 4));
  return decodeProgramInfo(info, mapIds);
}

export function mapInfoByFd(fd: number): MapInfo {
  const info = objectInfo(fd, 'map', MAP_INFO_SIZE);
  const typeId = info.readUInt32LE(0);
  return {
    id: info.readUInt32LE(4),
    type: nameOf(MAP_TYPES, typeId),
    typeId,
    keySize: info.readUInt32LE(8),
    valueSize: info.readUInt32LE(12),
    maxEntries: info.readUInt32LE(16),
    flags: info.readUInt32LE(20),
    name: readCString(info, 24, OBJ_NAME_LEN),
  };
}

export function linkInfoByFd(fd: number): LinkInfo {
  const info = objectInfo(fd, 'link', LINK_INFO_SIZE);
  const typeId = info.readUInt32LE(0);
  const out: LinkInfo = { id: info.readUInt32LE(4), type: nameOf(LINK_TYPES, typeId), typeId, progId: info.readUInt32LE(8) };
  // The per-type union starts at offset 16.
  if (typeId === LINK_TYPES.xdp) {
    out.ifindex = info.readUInt32LE(16);
    out.attachType = 'xdp';
  } else if (typeId === LINK_TYPES.tcx || typeId === LINK_TYPES.netkit) {
    out.ifindex = info.readUInt32LE(16);
    out.attachType = nameOf(ATTACH_TYPES, info.readUInt32LE(20));
  } else if (typeId === LINK_TYPES.netns) {
    out.attachType = nameOf(ATTACH_TYPES, info.readUInt32LE(20));
  } else if (typeId === LINK_TYPES.cgroup) {
    out.attachType = nameOf(ATTACH_TYPES, info.readUInt32LE(24));
  }
  return out;
}

function fdById(cmd: number, id: number, kind: string): number {
  const attr = new Attr().u32(Off.getId.id, id);
  return bpfCall(cmd, attr, `open ${kind}`, `id ${id}`);
}

/** A new fd for the program with kernel id `id` (the caller closes it). */
export function programFdById(id: number): number {
  return fdById(Cmd.PROG_GET_FD_BY_ID, id, 'program');
}

export function mapFdById(id: number): number {
  return fdById(Cmd.MAP_GET_FD_BY_ID, id, 'map');
}

export function linkFdById(id: number): number {
  return fdById(Cmd.LINK_GET_FD_BY_ID, id, 'link');
}

function withRef<T>(ref: ObjectRef, open: (id: number) => number, read: (fd: number) => T): T {
  if (typeof ref !== 'number') return read(ref.fd);
  const fd = open(ref);
  try {
    return read(fd);
  } finally {
    closeFd(fd);
  }
}

/** Info of a program, given an open fd holder (a Program) or a kernel program id (a number). */
export function programInfo(ref: ObjectRef): ProgramInfo {
  return withRef(ref, programFdById, programInfoByFd);
}

export function mapInfo(ref: ObjectRef): MapInfo {
  return withRef(ref, mapFdById, mapInfoByFd);
}

/** Info of a link, given an open fd holder (a Link) or a kernel link id (a number). */
export function linkInfo(ref: ObjectRef): LinkInfo {
  return withRef(ref, linkFdById, linkInfoByFd);
}

/** Every id the kernel hands out for one kind of object, in increasing order. */
function allIds(cmd: number, kind: string): number[] {
  const ids: number[] = [];
  let start = 0;
  for (;;) {
    const attr = new Attr().u32(Off.getId.startId, start);
    const ret = bpfTry(cmd, attr);
    if (ret === -ENOENT) return ids;
    if (ret < 0) throw new BpfError(`list ${kind}s`, '', -ret);
    start = attr.getU32(Off.getId.nextId);
    ids.push(start);
  }
}

/** Info of every object of a kind; objects unloaded while listing are skipped. */
function listAll<T>(nextCmd: number, kind: string, open: (id: number) => number, read: (fd: number) => T): T[] {
  const out: T[] = [];
  for (const id of allIds(nextCmd, kind)) {
    let fd: number;
    try {
      fd = open(id);
    } catch (err) {
      if (err instanceof BpfError && err.errno === ENOENT) continue;
      throw err;
    }
    try {
      out.push(read(fd));
    } finally {
      closeFd(fd);
    }
  }
  return out;
}

/** Every BPF program loaded on this machine (all namespaces). */
export function listPrograms(): ProgramInfo[] {
  return listAll(Cmd.PROG_GET_NEXT_ID, 'program', programFdById, programInfoByFd);
}

export function listMaps(): MapInfo[] {
  return listAll(Cmd.MAP_GET_NEXT_ID, 'map', mapFdById, mapInfoByFd);
}

/** Every BPF link on this machine (all namespaces). */
export function listLinks(): LinkInfo[] {
  return listAll(Cmd.LINK_GET_NEXT_ID, 'link', linkFdById, linkInfoByFd);
}

export interface QueryResult {
  /** Attached programs, in the order they run. */
  progIds: number[];
  /** For each program, the id of the link holding it, or 0 when attached without a link. */
  linkIds: number[];
  /** Changes with every attach/detach on this hook (tcx), usable as an expected revision. */
  revision: bigint;
}

/**
 * BPF_PROG_QUERY on an interface hook, e.g. queryProgs(ifindex, 'tcx_ingress') (6.6+ for tcx).
 * The ifindex is looked up in the calling thread's network namespace (ENODEV if absent there).
 */
export function queryProgs(ifindex: number, attachType: AttachType | number): QueryResult {
  const type = typeof attachType === 'number' ? attachType : ATTACH_TYPES[attachType];
  if (type === undefined) throw new NetmangleError(`unknown attach type '${String(attachType)}'`);
  let capacity = 16;
  for (;;) {
    const progIds = Buffer.alloc(capacity * 4);
    const linkIds = Buffer.alloc(capacity * 4);
    const attr = new Attr()
      .u32(Off.query.targetIfindex, ifindex)
      .u32(Off.query.attachType, type)
      .ptr(Off.query.progIds, progIds)
      .u32(Off.query.count, capacity)
      .ptr(Off.query.linkIds, linkIds);
    const ret = bpfTry(Cmd.PROG_QUERY, attr);
    const count = attr.getU32(Off.query.count);
    if (ret === -ENOSPC && count > capacity) {
      capacity = count;
      continue;
    }
    if (ret < 0) throw new BpfError('query programs on', `ifindex ${ifindex} (${nameOf(ATTACH_TYPES, type)})`, -ret);
    const out: QueryResult = { progIds: [], linkIds: [], revision: attr.getU64(Off.query.revision) };
    for (let i = 0; i < Math.min(count, capacity); i++) {
      out.progIds.push(progIds.readUInt32LE(i * 4));
      out.linkIds.push(linkIds.readUInt32LE(i * 4));
    }
    return out;
  }
}

/**
 * Turns on run-time statistics (run_time_ns, run_cnt in ProgramInfo) for as long as the
 * returned fd stays open (BPF_ENABLE_STATS, 5.8+). Close it with closeFd() or dispose it.
 */
export function enableStats(): { fd: number; close(): void; [Symbol.dispose](): void } {
  const fd = bpfCall(Cmd.ENABLE_STATS, new Attr().u32(Off.enableStats.type, 0), 'enable', 'BPF run-time statistics');
  let open = true;
  const close = (): void => {
    if (open) closeFd(fd);
    open = false;
  };
  return { fd, close, [Symbol.dispose]: close };
}
