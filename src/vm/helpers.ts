/**
 * The eBPF helper functions the VM provides, by id, each with the program types that may
 * call it and whether it changes the packet (which invalidates packet pointers, as in the
 * kernel's bpf_helper_changes_pkt_data). Semantics follow net/core/filter.c and
 * kernel/bpf/helpers.c for a packet that is not CHECKSUM_PARTIAL or COMPLETE, which is what
 * BPF_PROG_TEST_RUN gives a program; differences are stated at each helper.
 *
 * A helper reads its arguments from the machine's registers r1..r5 and leaves its result
 * in r0; the machine clobbers r1..r5 afterwards.
 */
import type { Machine } from './machine.js';
import type { ProgramType } from './context.js';
import { helperName } from './helper-names.js';
import { T_SCALAR, ETH_HLEN, XDP_FRAME_SIZE, MAX_PACKET } from './regions.js';
import * as C from './csum.js';

export interface HelperDef {
  id: number;
  name: string;
  types: readonly ProgramType[];
  changesPacket: boolean;
  fn: (m: Machine, pc: number) => void;
}

export const HELPERS: (HelperDef | undefined)[] = [];

const ALL: readonly ProgramType[] = ['xdp', 'sched_cls', 'socket_filter'];
const TC: readonly ProgramType[] = ['sched_cls'];
const XDP: readonly ProgramType[] = ['xdp'];

function def(id: number, types: readonly ProgramType[], changesPacket: boolean, fn: (m: Machine, pc: number, name: string) => void): void {
  const name = helperName(id);
  HELPERS[id] = { id, name, types, changesPacket, fn: (m, pc) => fn(m, pc, name) };
}

// errnos as helpers return them
const EINVAL = 22;
const EFAULT = 14;

/** r0 = a signed 32-bit result, sign-extended (errors are negative). */
function ret(m: Machine, v: number): void {
  m.lo[0] = v | 0;
  m.hi[0] = (v | 0) >> 31;
  m.tag[0] = T_SCALAR;
}

/** r0 = an unsigned 32-bit result, zero-extended. */
function retU32(m: Machine, v: number): void {
  m.lo[0] = v | 0;
  m.hi[0] = 0;
  m.tag[0] = T_SCALAR;
}

/** An argument's full 64 bits are a small unsigned flags word: anything in the high half is an unknown flag. */
function flagsArg(m: Machine, pc: number, reg: number, name: string): number {
  const lo = m.argScalar(pc, reg, name);
  return m.hi[reg] !== 0 ? 0x7fffffff : lo >>> 0;
}

// ---- maps

def(1, ALL, false, (m, pc, name) => {
  const map = m.argMap(pc, 1, name);
  const k = m.argMem(pc, 2, map.keySize, false, name);
  const v = map.lookupAt(m.rbuf, k, m.cpu);
  if (v === null) {
    ret(m, 0);
    return;
  }
  m.lo[0] = 0;
  m.hi[0] = 0;
  m.tag[0] = m.valueTag(map, v);
});

def(2, ALL, false, (m, pc, name) => {
  const map = m.argMap(pc, 1, name);
  const k = m.argMem(pc, 2, map.keySize, false, name);
  const kbuf = m.rbuf;
  const v = m.argMem(pc, 3, map.valueSize, false, name);
  ret(m, map.updateAt(kbuf, k, m.rbuf, v, flagsArg(m, pc, 4, name), m.cpu));
});

def(3, ALL, false, (m, pc, name) => {
  const map = m.argMap(pc, 1, name);
  const k = m.argMem(pc, 2, map.keySize, false, name);
  ret(m, map.deleteAt(m.rbuf, k));
});

// ---- time, randomness, cpu

/** The VM's clock: the run's `ktimeNs` (the same for every call in a run). */
function ktime(m: Machine): void {
  m.lo[0] = m.ktime[0]!;
  m.hi[0] = m.ktime[1]!;
  m.tag[0] = T_SCALAR;
}
def(5, ALL, false, ktime); // ktime_get_ns
def(125, ALL, false, ktime); // ktime_get_boot_ns
def(160, ALL, false, ktime); // ktime_get_coarse_ns
def(208, ALL, false, ktime); // ktime_get_tai_ns

/** The VM's own seeded generator (see Machine.seed); the kernel's is not reproducible anyway. */
def(7, ALL, false, (m) => retU32(m, m.random()));

def(8, ALL, false, (m) => retU32(m, m.cpu));

// ---- packet bytes (tc)

def(9, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) >>> 0;
  const len = m.argScalar(pc, 4, name) >>> 0;
  const from = m.argMem(pc, 3, len, false, name);
  const src = m.rbuf;
  const flags = flagsArg(m, pc, 5, name);
  // BPF_F_RECOMPUTE_CSUM only matters for CHECKSUM_COMPLETE packets, never the case here.
  if (flags & ~(1 | 2)) return ret(m, -EINVAL);
  if (offset > 0x7fffffff || offset + len > m.packetLength) return ret(m, -EFAULT);
  m.pkt.set(src.subarray(from, from + len), m.pktStart + offset);
  ret(m, 0);
});

def(26, ['sched_cls', 'socket_filter'], false, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) >>> 0;
  const len = m.argScalar(pc, 4, name) >>> 0;
  const to = m.argMem(pc, 3, len, true, name);
  const dst = m.rbuf;
  if (offset > 0x7fffffff || offset + len > m.packetLength) {
    dst.fill(0, to, to + len);
    return ret(m, -EFAULT);
  }
  dst.set(m.pkt.subarray(m.pktStart + offset, m.pktStart + offset + len), to);
  ret(m, 0);
});

/** bpf_xdp_load_bytes: bytes from the frame into memory; out of the frame, -EINVAL and nothing written. */
def(189, ['xdp'], false, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) >>> 0;
  const len = m.argScalar(pc, 4, name) >>> 0;
  const to = m.argMem(pc, 3, len, true, name);
  if (len === 0 || offset > 0x7fffffff || offset + len > m.packetLength) return ret(m, -EINVAL);
  m.rbuf.set(m.pkt.subarray(m.pktStart + offset, m.pktStart + offset + len), to);
  ret(m, 0);
});

// ---- checksums

/** Validates a checksum field's offset as bpf_l3/l4_csum_replace do; returns its buffer index or -1 with r0 set. */
function csumField(m: Machine, offset: number): number {
  if (offset > 0xffff || (offset & 1) !== 0) {
    ret(m, -EFAULT);
    return -1;
  }
  if (offset + 2 > m.packetLength) {
    ret(m, -EFAULT);
    return -1;
  }
  return m.pktStart + offset;
}

const readSum = (m: Machine, p: number): number => m.pkt[p]! | (m.pkt[p + 1]! << 8);
const writeSum = (m: Machine, p: number, v: number): void => {
  m.pkt[p] = v & 0xff;
  m.pkt[p + 1] = (v >>> 8) & 0xff;
};

const BPF_F_HDR_FIELD_MASK = 0xf;
const BPF_F_PSEUDO_HDR = 1 << 4;
const BPF_F_MARK_MANGLED_0 = 1 << 5;
const BPF_F_MARK_ENFORCE = 1 << 6;
const BPF_F_IPV6 = 1 << 7;

def(10, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) >>> 0;
  const from = m.argScalar(pc, 3, name) >>> 0, fromHi = m.hi[3]!;
  const to = m.argScalar(pc, 4, name) >>> 0;
  const flags = flagsArg(m, pc, 5, name);
  if (flags & ~BPF_F_HDR_FIELD_MASK) return ret(m, -EINVAL);
  const p = csumField(m, offset);
  if (p < 0) return;
  const sum = readSum(m, p);
  switch (flags & BPF_F_HDR_FIELD_MASK) {
    case 0:
      if (from !== 0 || fromHi !== 0) return ret(m, -EINVAL);
      writeSum(m, p, C.csumReplaceByDiff(sum, to));
      break;
    case 2:
      writeSum(m, p, C.csumReplace2(sum, from & 0xffff, to & 0xffff));
      break;
    case 4:
      writeSum(m, p, C.csumReplace4(sum, from, to));
      break;
    default:
      return ret(m, -EINVAL);
  }
  ret(m, 0);
});

def(11, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) >>> 0;
  const from = m.argScalar(pc, 3, name) >>> 0, fromHi = m.hi[3]!;
  const to = m.argScalar(pc, 4, name) >>> 0;
  const flags = flagsArg(m, pc, 5, name);
  const known = BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE | BPF_F_PSEUDO_HDR | BPF_F_HDR_FIELD_MASK | BPF_F_IPV6;
  if (flags & ~known) return ret(m, -EINVAL);
  const p = csumField(m, offset);
  if (p < 0) return;
  const mangledZero = (flags & BPF_F_MARK_MANGLED_0) !== 0;
  // A UDP checksum of 0 means "none": with BPF_F_MARK_MANGLED_0 it stays 0 unless enforced.
  if (mangledZero && (flags & BPF_F_MARK_ENFORCE) === 0 && readSum(m, p) === 0) return ret(m, 0);
  // BPF_F_PSEUDO_HDR only changes skb->csum for CHECKSUM_COMPLETE / PARTIAL packets; not here.
  const sum = readSum(m, p);
  switch (flags & BPF_F_HDR_FIELD_MASK) {
    case 0:
      if (from !== 0 || fromHi !== 0) return ret(m, -EINVAL);
      writeSum(m, p, C.inetProtoCsumReplaceByDiff(sum, to));
      break;
    case 2:
      writeSum(m, p, C.inetProtoCsumReplace4(sum, from & 0xffff, to & 0xffff));
      break;
    case 4:
      writeSum(m, p, C.inetProtoCsumReplace4(sum, from, to));
      break;
    default:
      return ret(m, -EINVAL);
  }
  // A result of 0 would read as "no checksum": the kernel writes CSUM_MANGLED_0 instead.
  if (mangledZero && readSum(m, p) === 0) writeSum(m, p, 0xffff);
  ret(m, 0);
});

/**
 * How bpf_csum_diff behaves. Kernels since the 2024 rework ("bpf_csum_diff: optimize and
 * homogenize for all archs", late 2024) fold the sum to 16 bits (not complemented) and take any
 * sizes; before it (6.1, for one) the result is the 32-bit partial sum, and sizes must be
 * multiples of 4 adding up to at most 512 bytes (a per-CPU scratch buffer), else -EINVAL. The
 * VM models the newer one; a test comparing it with an older kernel switches to what the
 * feature probe found there (csum_diff_folded, csum_diff_any_size).
 */
export const csumDiffModel = { folds: true, anySize: true };
/** For tests against an older kernel's bpf_csum_diff; returns the model it replaced. */
export function setCsumDiffModel(model: { folds: boolean; anySize: boolean }): { folds: boolean; anySize: boolean } {
  const before = { ...csumDiffModel };
  Object.assign(csumDiffModel, model);
  return before;
}
/** The old helper's scratch buffer: 128 words. */
const CSUM_DIFF_OLD_MAX = 512;

def(28, ['xdp', 'sched_cls'], false, (m, pc, name) => {
  const fromSize = m.argScalar(pc, 2, name) >>> 0;
  const toSize = m.argScalar(pc, 4, name) >>> 0;
  const seed = m.argScalar(pc, 5, name) >>> 0;
  let from = 0, to = 0;
  let fromBuf: Uint8Array = m.rbuf, toBuf: Uint8Array = m.rbuf;
  if (fromSize > 0 || m.tag[1] !== T_SCALAR) { from = m.argMem(pc, 1, fromSize, false, name); fromBuf = m.rbuf; }
  if (toSize > 0 || m.tag[3] !== T_SCALAR) { to = m.argMem(pc, 3, toSize, false, name); toBuf = m.rbuf; }
  // Newer kernels take any sizes here (the verifier bounds them by the memory they point to).
  if (!csumDiffModel.anySize && ((fromSize | toSize) & 3 || fromSize + toSize > CSUM_DIFF_OLD_MAX)) return ret(m, -EINVAL);
  let r: number;
  if (fromSize && toSize) r = C.csumSub(C.csumPartial(toBuf, to, toSize, seed), C.csumPartial(fromBuf, from, fromSize, 0));
  else if (toSize) r = C.csumPartial(toBuf, to, toSize, seed);
  else if (fromSize) r = ~C.csumPartial(fromBuf, from, fromSize, ~seed >>> 0) >>> 0;
  else r = seed;
  retU32(m, csumDiffModel.folds ? C.csumFrom32to16(r) : r);
});

// ---- redirects

const BPF_F_INGRESS = 1;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;
const XDP_ABORTED = 0;
const XDP_REDIRECT = 4;

/** bpf_clone_redirect: recorded as "sent again" with a copy of the packet as it is now. */
def(13, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const ifindex = m.argScalar(pc, 2, name) >>> 0;
  const flags = flagsArg(m, pc, 3, name);
  if (flags & ~BPF_F_INGRESS) return ret(m, -EINVAL);
  if (ifindex === 0) return ret(m, -EINVAL); // no such device
  m.clones.push({ ifindex, ingress: (flags & BPF_F_INGRESS) !== 0, packet: m.pkt.slice(m.pktStart, m.pktEnd) });
  ret(m, 0);
});

/** bpf_redirect: recorded as "sent to ifindex N" (it takes effect if the program returns the redirect verdict). */
def(23, ['xdp', 'sched_cls'], false, (m, pc, name) => {
  const ifindex = m.argScalar(pc, 1, name) >>> 0;
  const flags = flagsArg(m, pc, 2, name);
  if (m.prog.type === 'xdp') {
    if (flags !== 0) return retU32(m, XDP_ABORTED);
    m.redirectIfindex = ifindex;
    m.redirectFlags = 0;
    return retU32(m, XDP_REDIRECT);
  }
  if (flags & ~BPF_F_INGRESS) return retU32(m, TC_ACT_SHOT);
  m.redirectIfindex = ifindex;
  m.redirectFlags = flags;
  retU32(m, TC_ACT_REDIRECT);
});

// ---- packet size

/** bpf_skb_change_tail: new bytes read as zero (see Machine.begin). */
def(38, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const newLen = m.argScalar(pc, 2, name) >>> 0;
  const flags = flagsArg(m, pc, 3, name);
  // min: the network header's offset (test-run skbs have no transport header set); max: loopback's MTU + header.
  if (flags !== 0 || newLen > MAX_PACKET || newLen < ETH_HLEN) return ret(m, -EINVAL);
  const oldEnd = m.pktEnd, newEnd = m.pktStart + newLen;
  if (newEnd > oldEnd) m.pkt.fill(0, oldEnd, newEnd);
  m.setEnd(newEnd);
  ret(m, 0);
});

/** bpf_skb_change_head: `len` zero bytes in front of the packet (within the VM's headroom). */
def(43, TC, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const len = m.argScalar(pc, 2, name) >>> 0;
  const flags = flagsArg(m, pc, 3, name);
  if (flags !== 0 || len > m.pktStart) return ret(m, -EINVAL);
  m.moveStart(-len);
  m.pkt.fill(0, m.pktStart, m.pktStart + len);
  ret(m, 0);
});

def(44, XDP, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) | 0;
  const data = m.pktStart + offset;
  if (data < XDP_FRAME_SIZE || data > m.pktEnd - ETH_HLEN) return ret(m, -EINVAL);
  m.moveStart(offset);
  ret(m, 0);
});

def(65, XDP, true, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  const offset = m.argScalar(pc, 2, name) | 0;
  const end = m.pktEnd + offset;
  if (end > m.hardEnd || end < m.pktStart + ETH_HLEN) return ret(m, -EINVAL);
  // The kernel clears grown bytes: they could hold stale memory.
  if (offset > 0) m.pkt.fill(0, m.pktEnd, end);
  m.setEnd(end);
  ret(m, 0);
});

/**
 * bpf_xdp_get_buff_len: the frame's whole length. The VM keeps every frame in one linear
 * buffer, so that is data_end - data; the kernel adds the fragments of a multi-buffer frame
 * (a test run puts bytes beyond 3520 there), which is the same total.
 */
def(188, XDP, false, (m, pc, name) => {
  m.argCtx(pc, 1, name);
  retU32(m, m.packetLength);
});

/** Ids the VM implements, for documentation and tests. */
export function implementedHelpers(): { id: number; name: string; types: readonly ProgramType[] }[] {
  return HELPERS.filter((h): h is HelperDef => h !== undefined).map((h) => ({ id: h.id, name: h.name, types: h.types }));
}


