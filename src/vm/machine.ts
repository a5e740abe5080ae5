/**
 * The state one program runs in, shared by the interpreter and the JIT: registers as int32
 * halves plus a region tag, the stack, the packet buffer, the context, map value regions,
 * and every check on memory and pointers. The engines do plain scalar work themselves and
 * come here for everything that touches a pointer, so both give the same answers and the
 * same errors.
 */
import { UsageError } from '../errors.js';
import * as O from '../bpf/opcodes.js';
import * as I64 from './int64.js';
import { VmError } from './errors.js';
import { type PreparedProgram, insnLabel } from './program.js';
import { contextLayout, FieldKind, type CtxLayout, type ContextInit } from './context.js';
import { HELPERS, type HelperDef } from './helpers.js';
import type { VmMap } from './maps.js';
import {
  T_SCALAR, T_UNINIT, T_STACK, T_CTX, T_PACKET, T_PACKET_STALE, T_MAP, T_VALUE,
  STACK_SIZE, MAX_FRAMES, LOOP_BUDGET, HEADROOM, MAX_PACKET, XDP_MAX_DATA, ETH_HLEN,
} from './regions.js';

/** A copy of the packet sent by bpf_clone_redirect. */
export interface ClonedPacket {
  ifindex: number;
  /** BPF_F_INGRESS: into the device's receive path rather than out of it. */
  ingress: boolean;
  packet: Uint8Array;
}

export interface RunInput {
  /** Context fields by name (`mark`, `ifindex`, `cb[0]` ...); others as BPF_PROG_TEST_RUN sets them. */
  ctx?: ContextInit;
  /** What bpf_ktime_get_ns returns during this run (a safe integer, e.g. the packet's capture time). */
  ktimeNs?: number;
}

const FRAME_WORDS = 13; // return index, then r6..r9 as (lo, hi, tag)

export class Machine {
  readonly prog: PreparedProgram;
  readonly layout: CtxLayout;
  readonly lo = new Int32Array(11);
  readonly hi = new Int32Array(11);
  readonly tag = new Int32Array(11);
  /** High half and tag of the value the last load/ALU slow path returned. */
  rhi = 0;
  rtag = 0;
  /** Buffer of the region the last `mem` call resolved. */
  rbuf: Uint8Array = new Uint8Array(0);

  readonly stack = new Uint8Array(STACK_SIZE * MAX_FRAMES);
  readonly stackView = new DataView(this.stack.buffer);
  /** The stack as 64-bit words, for clearing it quickly. */
  private readonly stackWords = new Float64Array(this.stack.buffer);
  /** Tag of the pointer spilled to each 8-byte stack slot; 0 when the slot holds plain bytes. */
  readonly stackSpill = new Int32Array((STACK_SIZE * MAX_FRAMES) / 8);
  /** Lowest stack byte written this run (engines and helpers lower it), so the next run clears only that much. */
  stackLow = 0;
  /** Bytes of stack the current frames may use: [0, stackLimit). */
  stackLimit = STACK_SIZE;
  depth = 0;
  private readonly frames = new Int32Array(MAX_FRAMES * FRAME_WORDS);

  /**
   * The buffer the packet is in: pkt[pktStart, pktEnd). A run starts on the caller's own
   * bytes, read in place; the first write to the packet (a store, or a helper that changes
   * it) copies it into the machine's buffer (`own`, with headroom before it) and the run
   * goes on there: see makeWritable. So the caller's bytes are never changed, and a run
   * that writes nothing copies nothing.
   */
  pkt: Uint8Array;
  pktView: DataView;
  /** The machine's own packet buffer: HEADROOM bytes of headroom, then room for the largest packet. */
  private readonly own = new Uint8Array(HEADROOM + MAX_PACKET + 64);
  private readonly ownView = new DataView(this.own.buffer);
  /** Whether this run wrote to the packet (so it is in `own`); false: pkt is still the caller's bytes, unchanged. */
  written = false;
  /**
   * The packet bytes the run's stores wrote, [writtenLow, writtenHigh) as offsets from the
   * packet's first byte, when only stores wrote it (a run that wrote nothing: empty). A helper
   * that writes or moves the packet makes it everything: writtenLow 0, writtenHigh Infinity.
   * Outside this range the packet holds the caller's bytes, which replay need not compare.
   */
  writtenLow = 0;
  writtenHigh = 0;
  /** The caller's buffer of the last run, and a view of it (replay passes one buffer again and again). */
  private inBuf: Uint8Array | undefined;
  private inView: DataView | undefined;
  private inBuf2: Uint8Array | undefined;
  private inView2: DataView | undefined;
  pktStart = HEADROOM;
  pktEnd = HEADROOM;
  /** Limits xdp_adjust_head/tail may move data and data_end to. */
  private pktHardEnd = HEADROOM;
  /** Part of `pkt` this run may have written outside the packet, zeroed before the next run. */
  private dirtyLow = HEADROOM;
  private dirtyHigh = HEADROOM;

  readonly ctx: Uint8Array;
  readonly ctxView: DataView;
  private readonly ctxWords: Int32Array;
  /**
   * Whether the context holds more than the default context of the last run (a caller's
   * fields or a program's store), so the next run must clear all of it. Starts true.
   */
  private ctxWritten = true;

  /** Map value regions: the program's static ones first, then one per lookup in this run. */
  readonly values: Uint8Array[] = [];
  readonly valueMaps: VmMap[] = [];
  valueCount = 0;

  budget = LOOP_BUDGET;
  private readonly isXdp: boolean;
  cpu = 0;
  /**
   * What bpf_ktime_get_ns returns this run, as (low, high) halves: in an Int32Array, since a
   * field given a 32-bit value beyond the small-integer range holds a heap number, one
   * allocation per packet in replay.
   */
  readonly ktime = new Int32Array(2);
  private readonly rng = new Uint32Array(4);

  redirectIfindex = -1;
  redirectFlags = 0;
  readonly clones: ClonedPacket[] = [];

  constructor(prog: PreparedProgram, opts: { seed?: number; cpu?: number } = {}) {
    this.prog = prog;
    this.pkt = this.own;
    this.pktView = this.ownView;
    this.layout = contextLayout(prog.type);
    this.isXdp = prog.type === 'xdp';
    this.ctx = new Uint8Array(this.layout.size);
    this.ctxView = new DataView(this.ctx.buffer);
    this.ctxWords = new Int32Array(this.ctx.buffer);
    for (const sv of prog.staticValues) {
      this.values.push(sv.bytes);
      this.valueMaps.push(sv.map);
    }
    this.cpu = opts.cpu ?? 0;
    this.seed(opts.seed ?? 1);
  }

  // ---------------------------------------------------------------- runs

  /** Sets everything up for one run of the program on `packet`. */
  begin(packet: Uint8Array, input?: RunInput): void {
    this.beginAt(packet, 0, packet.length, input);
  }

  /** begin() for the packet bytes[offset, offset + len), without a view of them (replay's hot path). */
  beginAt(bytes: Uint8Array, offset: number, len: number, input?: RunInput): void {
    if (len > MAX_PACKET) throw new UsageError(`packet of ${len} bytes is larger than the VM's ${MAX_PACKET}-byte limit`);
    // The run reads the caller's bytes where they are, until it writes (makeWritable).
    // Views of the last two callers' buffers are kept: a second program of a replay runs on the
    // reader's buffer or on the first program's, packet by packet.
    let view: DataView;
    if (bytes === this.inBuf) view = this.inView!;
    else if (bytes === this.inBuf2) view = this.inView2!;
    else view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes !== this.inBuf) {
      this.inBuf2 = this.inBuf;
      this.inView2 = this.inView;
      this.inBuf = bytes;
      this.inView = view;
    }
    this.pkt = bytes;
    this.pktView = view;
    this.pktStart = offset;
    this.pktEnd = offset + len;
    this.pktHardEnd = offset + len;
    this.written = false;
    this.writtenLow = 0;
    this.writtenHigh = 0;

    // Clear only the part of frame 0's stack the previous run wrote (deeper frames are cleared on call).
    const words = this.stackWords, spill = this.stackSpill;
    for (let i = this.stackLow >> 3; i < STACK_SIZE / 8; i++) { words[i] = 0; spill[i] = 0; }
    this.stackLow = STACK_SIZE;
    this.stackLimit = STACK_SIZE;
    this.depth = 0;

    if (this.ctxWritten) {
      const ctxWords = this.ctxWords;
      for (let i = 0; i < ctxWords.length; i++) ctxWords[i] = 0;
      this.ctxWritten = false;
    } else if (!this.isXdp) {
      // Only the default context is there: clear the fields it sets per packet (the rest are constant).
      this.ctxWords[1] = 0; // pkt_type
      this.ctxWords[4] = 0; // protocol
    }
    this.applyDefaultContext(bytes, offset, len);
    if (input?.ctx) for (const name in input.ctx) this.setCtxField(name, input.ctx[name]!);

    this.valueCount = this.prog.staticValues.length;
    this.budget = LOOP_BUDGET;
    this.redirectIfindex = -1;
    this.redirectFlags = 0;
    if (this.clones.length !== 0) this.clones.length = 0; // setting length is slow even when unchanged
    // Written without `input?.ktimeNs ?? 0` and without a call: V8 boxes the double of either
    // (a heap number per packet in replay); this way the clock stays unboxed.
    if (input === undefined || input.ktimeNs === undefined || input.ktimeNs === 0) {
      this.ktime[0] = 0;
      this.ktime[1] = 0;
      return;
    }
    const t = input.ktimeNs;
    if (!(t >= 0 && t <= Number.MAX_SAFE_INTEGER && Math.floor(t) === t)) throw new UsageError(`ktimeNs must be a non-negative safe integer, got ${t}`);
    const hi = Math.floor(t / 4294967296);
    this.ktime[1] = hi;
    this.ktime[0] = t - hi * 4294967296;
  }

  /** What BPF_PROG_TEST_RUN presents without a caller's context (see defaultContext), written without allocating. */
  private applyDefaultContext(packet: Uint8Array, at: number, len: number): void {
    const v = this.ctxView;
    if (this.prog.type === 'xdp') {
      v.setUint32(12, 1, true); // ingress_ifindex: loopback
      return;
    }
    v.setUint32(40, 1, true); // ifindex: loopback
    if (len >= ETH_HLEN) {
      let etherType = (packet[at + 12]! << 8) | packet[at + 13]!;
      if (etherType < 0x600) etherType = 0x0004;
      v.setUint32(16, ((etherType & 0xff) << 8) | (etherType >>> 8), true);
      let broadcast = true, toSelf = true;
      for (let i = 0; i < 6; i++) {
        if (packet[at + i] !== 0xff) broadcast = false;
        if (packet[at + i] !== 0) toSelf = false;
      }
      v.setUint32(4, broadcast ? 1 : (packet[at]! & 1) !== 0 ? 2 : toSelf ? 0 : 3, true);
    }
  }

  /**
   * Before the first write of a run to the packet: copies it into the machine's own buffer at
   * HEADROOM, where helpers may grow it into the headroom or past its end, and where outside
   * the packet reads as zeros, as a fresh test-run buffer does. Every path that writes the
   * packet calls this first: stores (here and in the JIT) and helpers that change the packet.
   */
  makeWritable(): void {
    if (this.written) return;
    this.written = true;
    this.writtenLow = Infinity;
    this.writtenHigh = 0;
    const len = this.pktEnd - this.pktStart;
    const start = HEADROOM, end = HEADROOM + len;
    const own = this.own;
    // Clear what the last writing run left outside this packet's bytes.
    if (this.dirtyLow < start) own.fill(0, this.dirtyLow, start);
    if (this.dirtyHigh > end) own.fill(0, end, this.dirtyHigh);
    const bytes = this.pkt, offset = this.pktStart;
    if (len > 128) own.set(bytes.subarray(offset, offset + len), start);
    else {
      // Small packets: four bytes a step (cheaper than a subarray); byte order is the same both ways.
      const src = this.pktView, dst = this.ownView;
      let i = 0;
      for (; i + 4 <= len; i += 4) dst.setUint32(start + i, src.getUint32(offset + i));
      for (; i < len; i++) own[start + i] = bytes[offset + i]!;
    }
    this.pkt = own;
    this.pktView = this.ownView;
    this.pktStart = start;
    this.pktEnd = end;
    this.pktHardEnd = HEADROOM + (this.isXdp ? Math.max(len, XDP_MAX_DATA) : MAX_PACKET);
    this.dirtyLow = start;
    this.dirtyHigh = end;
  }

  /** makeWritable for a helper, which may write (or move) any of the packet. */
  private writesAll(): void {
    this.makeWritable();
    this.writtenLow = 0;
    this.writtenHigh = Infinity;
  }

  /** Registers at entry: r1 = context, r10 = frame pointer, the rest unwritten. The JIT keeps its own copy. */
  resetRegisters(): void {
    const lo = this.lo, hi = this.hi, tag = this.tag;
    for (let r = 0; r <= 10; r++) { lo[r] = 0; hi[r] = 0; tag[r] = T_UNINIT; }
    tag[1] = T_CTX;
    tag[10] = T_STACK;
    lo[10] = STACK_SIZE;
  }

  private setCtxField(name: string, value: number): void {
    const field = this.layout.fields.find((f) => f.name === name);
    if (!field) throw new UsageError(`${this.layout.struct} has no field "${name}" a ${this.prog.type} program can see`);
    if (field.kind !== FieldKind.Read && field.kind !== FieldKind.ReadWrite) throw new UsageError(`${this.layout.struct} field ${name} is set by the VM, not by the caller`);
    this.ctxWritten = true;
    if (field.size === 8) {
      this.ctxView.setUint32(field.offset, value % 4294967296, true);
      this.ctxView.setUint32(field.offset + 4, Math.floor(value / 4294967296), true);
    } else this.ctxView.setUint32(field.offset, value >>> 0, true);
  }

  /** Reads a context field by name after a run (mark, priority, tc_classid, cb[0] ...). */
  ctxField(name: string): number {
    const field = this.layout.fields.find((f) => f.name === name);
    if (!field) throw new UsageError(`${this.layout.struct} has no field "${name}"`);
    if (field.kind === FieldKind.Len) return this.pktEnd - this.pktStart;
    if (field.size === 8) return this.ctxView.getUint32(field.offset + 4, true) * 4294967296 + this.ctxView.getUint32(field.offset, true);
    return this.ctxView.getUint32(field.offset, true);
  }

  get packetLength(): number {
    return this.pktEnd - this.pktStart;
  }

  // ---------------------------------------------------------------- errors

  fail(pc: number, why: string): VmError {
    return new VmError(`${insnLabel(this.prog, pc)}: ${why}`, this.prog.slotOf[pc]);
  }

  regName(reg: number): string {
    return `r${reg}`;
  }

  describeTag(t: number): string {
    switch (t) {
      case T_SCALAR: return 'a number';
      case T_UNINIT: return 'nothing (never written)';
      case T_STACK: return 'a stack pointer';
      case T_CTX: return `a pointer to the context (${this.layout.struct})`;
      case T_PACKET: return 'a packet pointer';
      case T_PACKET_STALE: return 'a packet pointer made invalid by a helper that changed the packet';
      case T_MAP: return 'a map';
      default: return `a pointer to a value of map ${this.valueMaps[t - T_VALUE]?.name ?? '?'}`;
    }
  }

  /** The error for reading register `reg` when it was never written. */
  uninit(pc: number, reg: number): VmError {
    return this.fail(pc, `reads r${reg}, which holds nothing (never written, or clobbered by a call)`);
  }

  // ---------------------------------------------------------------- memory

  /**
   * Loads `size` bytes at (pointer + off). The base register's tag and halves are passed in;
   * returns the value's low half, high half in `rhi`, tag in `rtag` (a spilled pointer
   * comes back as a pointer).
   */
  load(pc: number, t: number, h: number, l: number, off: number, size: number, signed: boolean): number {
    const a = l + off;
    this.rtag = T_SCALAR;
    if (t === T_PACKET) {
      const len = this.pktEnd - this.pktStart;
      if (h !== l >> 31 || a < 0 || a + size > len) throw this.outOfBounds(pc, 'read', size, t, h !== l >> 31, a, len);
      return this.readLE(this.pktView, this.pktStart + a, size, signed);
    }
    if (t === T_STACK) {
      if (h !== l >> 31 || a < 0 || a + size > this.stackLimit) throw this.outOfBounds(pc, 'read', size, t, h !== l >> 31, a, this.stackLimit);
      const first = a >> 3, last = (a + size - 1) >> 3;
      const spilled = this.stackSpill[first]!;
      if (spilled !== 0 || this.stackSpill[last] !== 0) {
        if (size !== 8 || (a & 7) !== 0) throw this.fail(pc, `reads ${size} bytes of a pointer spilled to the stack at fp${a - this.fp()}; only a whole 8-byte fill restores it`);
        const v = this.readLE(this.stackView, a, 8, false);
        this.rtag = spilled;
        return v;
      }
      return this.readLE(this.stackView, a, size, signed);
    }
    if (t >= T_VALUE) {
      const region = this.values[t - T_VALUE]!;
      if (h !== l >> 31 || a < 0 || a + size > region.length) throw this.outOfBounds(pc, 'read', size, t, h !== l >> 31, a, region.length);
      return this.readBytes(region, a, size, signed);
    }
    if (t === T_CTX) {
      if (h !== l >> 31) throw this.outOfBounds(pc, 'read', size, t, h !== l >> 31, a, this.layout.size);
      return this.ctxLoad(pc, a, size, signed);
    }
    throw this.badBase(pc, t, 'read');
  }

  /** Stores the value (vt, vh, vl) of `size` bytes at (pointer + off). */
  store(pc: number, t: number, h: number, l: number, off: number, size: number, vt: number, vh: number, vl: number): void {
    const a = l + off;
    if (vt === T_UNINIT) throw this.uninit(pc, this.prog.insns[pc]!.src);
    if (vt !== T_SCALAR && t !== T_STACK) throw this.fail(pc, `stores ${this.describeTag(vt)} outside the stack; the VM cannot give a pointer a numeric address`);
    if (t === T_PACKET) {
      const len = this.pktEnd - this.pktStart;
      if (h !== l >> 31 || a < 0 || a + size > len) throw this.outOfBounds(pc, 'write', size, t, h !== l >> 31, a, len);
      if (this.prog.type === 'socket_filter') throw this.fail(pc, 'socket filters may not write to the packet');
      this.makeWritable();
      if (a < this.writtenLow) this.writtenLow = a;
      if (a + size > this.writtenHigh) this.writtenHigh = a + size;
      this.writeLE(this.pktView, this.pktStart + a, size, vh, vl);
      return;
    }
    if (t === T_STACK) {
      if (h !== l >> 31 || a < 0 || a + size > this.stackLimit) throw this.outOfBounds(pc, 'write', size, t, h !== l >> 31, a, this.stackLimit);
      if (a < this.stackLow) this.stackLow = a;
      if (vt !== T_SCALAR) {
        if (size !== 8 || (a & 7) !== 0) throw this.fail(pc, `spills ${this.describeTag(vt)} with a ${size}-byte store at fp${a - this.fp()}; pointers are spilled whole, 8-byte aligned`);
        this.stackSpill[a >> 3] = vt;
      } else {
        this.stackSpill[a >> 3] = 0;
        this.stackSpill[(a + size - 1) >> 3] = 0;
      }
      this.writeLE(this.stackView, a, size, vh, vl);
      return;
    }
    if (t >= T_VALUE) {
      const region = this.values[t - T_VALUE]!;
      if (h !== l >> 31 || a < 0 || a + size > region.length) throw this.outOfBounds(pc, 'write', size, t, h !== l >> 31, a, region.length);
      this.writeBytes(region, a, size, vh, vl);
      return;
    }
    if (t === T_CTX) {
      if (h !== l >> 31) throw this.outOfBounds(pc, 'write', size, t, h !== l >> 31, a, this.layout.size);
      this.ctxStore(pc, a, size, vh, vl);
      return;
    }
    throw this.badBase(pc, t, 'write');
  }

  /** Atomic read-modify-write (one CPU: no other writer to race with). Returns nothing; updates registers directly. */
  atomic(pc: number): void {
    const insn = this.prog.insns[pc]!;
    const size = O.size(insn.code) === O.BPF_DW ? 8 : 4;
    const d = insn.dst, s = insn.src;
    const t = this.tag[d]!;
    if (t !== T_STACK && t < T_VALUE) throw this.fail(pc, `atomic operation on ${this.describeTag(t)}; only the stack and map values allow them`);
    if (this.tag[s] !== T_SCALAR) throw this.tag[s] === T_UNINIT ? this.uninit(pc, s) : this.fail(pc, `atomic operand r${s} is ${this.describeTag(this.tag[s]!)}, not a number`);
    const oldLo = this.load(pc, t, this.hi[d]!, this.lo[d]!, insn.off, size, false);
    const oldHi = this.rhi;
    if (this.rtag !== T_SCALAR) throw this.fail(pc, 'atomic operation on a spilled pointer');
    let sl = this.lo[s]!, sh = size === 8 ? this.hi[s]! : 0;
    let nl: number, nh: number;
    const op = insn.imm & ~O.BPF_FETCH;
    if (insn.imm === O.BPF_CMPXCHG) {
      if (this.tag[0] !== T_SCALAR) throw this.tag[0] === T_UNINIT ? this.uninit(pc, 0) : this.fail(pc, 'cmpxchg compares with r0, which is not a number');
      const el = this.lo[0]!, eh = size === 8 ? this.hi[0]! : 0;
      const equal = el === oldLo && eh === oldHi;
      if (equal) this.store(pc, t, this.hi[d]!, this.lo[d]!, insn.off, size, T_SCALAR, sh, sl);
      this.lo[0] = oldLo; this.hi[0] = oldHi;
      return;
    }
    if (insn.imm === O.BPF_XCHG) { nl = sl; nh = sh; }
    else if (op === O.BPF_ADD) { nl = I64.add64(oldHi, oldLo, sh, sl); nh = size === 8 ? I64.HI[0]! : 0; }
    else if (op === O.BPF_OR) { nl = oldLo | sl; nh = oldHi | sh; }
    else if (op === O.BPF_AND) { nl = oldLo & sl; nh = oldHi & sh; }
    else { nl = oldLo ^ sl; nh = oldHi ^ sh; }
    this.store(pc, t, this.hi[d]!, this.lo[d]!, insn.off, size, T_SCALAR, nh, nl);
    if (insn.imm & O.BPF_FETCH) { this.lo[s] = oldLo; this.hi[s] = oldHi; sl = oldLo; sh = oldHi; }
  }

  private fp(): number {
    return STACK_SIZE * (this.depth + 1);
  }

  private readLE(view: DataView, p: number, size: number, signed: boolean): number {
    switch (size) {
      case 1: { const v = signed ? view.getInt8(p) : view.getUint8(p); this.rhi = v >> 31; return v; }
      case 2: { const v = signed ? view.getInt16(p, true) : view.getUint16(p, true); this.rhi = v >> 31; return v; }
      case 4: { const v = view.getInt32(p, true); this.rhi = signed ? v >> 31 : 0; return v; }
      default: this.rhi = view.getInt32(p + 4, true); return view.getInt32(p, true);
    }
  }

  /** Little-endian read from a byte array (map values have no DataView of their own). */
  private readBytes(b: Uint8Array, p: number, size: number, signed: boolean): number {
    switch (size) {
      case 1: { const v = signed ? (b[p]! << 24) >> 24 : b[p]!; this.rhi = v >> 31; return v; }
      case 2: { const u = b[p]! | (b[p + 1]! << 8); const v = signed ? (u << 16) >> 16 : u; this.rhi = v >> 31; return v; }
      case 4: { const v = b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24); this.rhi = signed ? v >> 31 : 0; return v; }
      default:
        this.rhi = b[p + 4]! | (b[p + 5]! << 8) | (b[p + 6]! << 16) | (b[p + 7]! << 24);
        return b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24);
    }
  }

  private writeBytes(b: Uint8Array, p: number, size: number, vh: number, vl: number): void {
    b[p] = vl;
    if (size === 1) return;
    b[p + 1] = vl >>> 8;
    if (size === 2) return;
    b[p + 2] = vl >>> 16;
    b[p + 3] = vl >>> 24;
    if (size === 4) return;
    b[p + 4] = vh; b[p + 5] = vh >>> 8; b[p + 6] = vh >>> 16; b[p + 7] = vh >>> 24;
  }

  private writeLE(view: DataView, p: number, size: number, vh: number, vl: number): void {
    switch (size) {
      case 1: view.setUint8(p, vl & 0xff); return;
      case 2: view.setUint16(p, vl & 0xffff, true); return;
      case 4: view.setInt32(p, vl, true); return;
      default: view.setInt32(p, vl, true); view.setInt32(p + 4, vh, true);
    }
  }

  private regionText(t: number, a: number): string {
    switch (t) {
      case T_PACKET: return `packet offset ${a}`;
      case T_STACK: return `stack offset fp${a - this.fp() >= 0 ? '+' : ''}${a - this.fp()}`;
      case T_CTX: return `offset ${a} of ${this.layout.struct}`;
      default: return `offset ${a} of a value of map ${this.valueMaps[t - T_VALUE]?.name ?? '?'}`;
    }
  }

  outOfBounds(pc: number, what: 'read' | 'write', size: number, t: number, wide: boolean, a: number, limit: number): VmError {
    if (wide) {
      return this.fail(pc, `${what} of ${size} bytes through ${this.describeTag(t)} whose offset does not fit 32 bits`);
    }
    const where = this.regionText(t, a);
    if (t === T_PACKET) {
      return this.fail(pc, a < 0 ? `${what} of ${size} bytes at ${where}, before the start of the packet` : `${what} of ${size} bytes at ${where} beyond end ${limit}`);
    }
    if (t === T_STACK) return this.fail(pc, `${what} of ${size} bytes at ${where}, outside the ${STACK_SIZE}-byte stack`);
    if (t === T_CTX) return this.fail(pc, `${what} of ${size} bytes at ${where}, outside the context`);
    return this.fail(pc, `${what} of ${size} bytes at ${where}, beyond its ${limit} bytes`);
  }

  private badBase(pc: number, t: number, what: string): VmError {
    const insn = this.prog.insns[pc]!;
    const reg = O.cls(insn.code) === O.BPF_LDX ? insn.src : insn.dst;
    if (t === T_UNINIT) return this.uninit(pc, reg);
    return this.fail(pc, `${what} through r${reg}, which holds ${this.describeTag(t)}, not a pointer to memory`);
  }

  private ctxLoad(pc: number, a: number, size: number, signed: boolean): number {
    const field = a >= 0 && a < this.layout.size ? this.layout.byOffset[a] : undefined;
    if (!field || this.layout.byOffset[a + size - 1] !== field) {
      throw this.fail(pc, `read of ${size} bytes at offset ${a} of ${this.layout.struct}: not a field a ${this.prog.type} program may read`);
    }
    switch (field.kind) {
      case FieldKind.Data:
      case FieldKind.DataEnd:
      case FieldKind.DataMeta:
        if (size !== 4 || a !== field.offset) throw this.fail(pc, `${this.layout.struct}->${field.name} must be read whole, with a 4-byte load`);
        this.rtag = T_PACKET;
        this.rhi = 0;
        return field.kind === FieldKind.DataEnd ? this.pktEnd - this.pktStart : 0;
      case FieldKind.Len: {
        const len = this.pktEnd - this.pktStart;
        const shifted = Math.floor(len / 2 ** (8 * (a - field.offset)));
        const v = size === 4 ? shifted : shifted & (size === 2 ? 0xffff : 0xff);
        this.rhi = 0;
        return v | 0;
      }
      default:
        return this.readLE(this.ctxView, a, size, signed);
    }
  }

  private ctxStore(pc: number, a: number, size: number, vh: number, vl: number): void {
    const field = a >= 0 && a < this.layout.size ? this.layout.byOffset[a] : undefined;
    if (!field || field.kind !== FieldKind.ReadWrite) {
      throw this.fail(pc, field ? `writes ${this.layout.struct}->${field.name}, which ${this.prog.type} programs may only read` : `write of ${size} bytes at offset ${a} of ${this.layout.struct}: not a field`);
    }
    if (a !== field.offset || size !== field.size) throw this.fail(pc, `writes ${this.layout.struct}->${field.name} with a ${size}-byte store; it takes ${field.size} bytes`);
    this.ctxWritten = true;
    this.writeLE(this.ctxView, a, size, vh, vl);
  }

  // ---------------------------------------------------------------- pointer arithmetic and comparison

  /**
   * ALU on operands of which at least one is not a number. Only 64-bit add and subtract of a
   * number to a pointer, and the difference of two pointers into one region, are defined.
   * Returns the low half; `rhi`, `rtag` get the rest.
   */
  aluSlow(pc: number, is64: boolean, op: number, dt: number, dh: number, dl: number, st: number, sh: number, sl: number): number {
    const insn = this.prog.insns[pc]!;
    if (dt === T_UNINIT) throw this.uninit(pc, insn.dst);
    if (st === T_UNINIT) throw this.uninit(pc, insn.src);
    const which = dt !== T_SCALAR ? dt : st;
    if (which === T_PACKET_STALE) throw this.fail(pc, `uses ${this.describeTag(which)}; read data and data_end again after such a helper`);
    if (which === T_MAP || (dt === T_MAP || st === T_MAP)) throw this.fail(pc, 'arithmetic on a map pointer, which only map helpers may take');
    if (!is64) throw this.fail(pc, `32-bit arithmetic on ${this.describeTag(which)}; pointers only take 64-bit add and subtract`);
    if (op === O.BPF_ADD && (dt === T_SCALAR || st === T_SCALAR)) {
      const lo = I64.add64(dh, dl, sh, sl);
      this.rhi = I64.HI[0]!;
      this.rtag = which;
      return lo;
    }
    if (op === O.BPF_SUB && st === T_SCALAR) {
      const lo = I64.sub64(dh, dl, sh, sl);
      this.rhi = I64.HI[0]!;
      this.rtag = dt;
      return lo;
    }
    if (op === O.BPF_SUB && dt === st) {
      const lo = I64.sub64(dh, dl, sh, sl);
      this.rhi = I64.HI[0]!;
      this.rtag = T_SCALAR;
      return lo;
    }
    const name = OP_NAMES[op] ?? 'this operation';
    if (op === O.BPF_SUB) throw this.fail(pc, `subtracts pointers into different regions (${this.describeTag(dt)} and ${this.describeTag(st)})`);
    throw this.fail(pc, `${name} on ${this.describeTag(which)}; pointers only take adding or subtracting a number`);
  }

  /** The error for a negation, byte swap, 32-bit or sign-extending move of register `reg`, which is not a number. */
  aluSlowError(pc: number, reg: number): VmError {
    const t = this.tag[reg]!;
    if (t === T_UNINIT) return this.uninit(pc, reg);
    return this.fail(pc, `uses r${reg}, which holds ${this.describeTag(t)}, where only a number is allowed; pointers only take 64-bit add and subtract`);
  }

  /** A conditional jump where an operand is not a number: same-region pointers compare offsets; a pointer is never null. */
  cmpSlow(pc: number, is64: boolean, op: number, at: number, ah: number, al: number, bt: number, bh: number, bl: number): boolean {
    const insn = this.prog.insns[pc]!;
    if (at === T_UNINIT) throw this.uninit(pc, insn.dst);
    if (bt === T_UNINIT) throw this.uninit(pc, insn.src);
    const which = at !== T_SCALAR ? at : bt;
    if (which === T_PACKET_STALE || at === T_PACKET_STALE || bt === T_PACKET_STALE) throw this.fail(pc, `compares ${this.describeTag(T_PACKET_STALE)}`);
    if (!is64) throw this.fail(pc, `32-bit comparison of ${this.describeTag(which)}`);
    if (op === O.BPF_JSET) throw this.fail(pc, `tests bits of ${this.describeTag(which)}`);
    if (at === bt) return compare(op, ah, al, bh, bl);
    const scalarZero = (at === T_SCALAR && (ah | al) === 0) || (bt === T_SCALAR && (bh | bl) === 0);
    if (!scalarZero || (at !== T_SCALAR && bt !== T_SCALAR)) {
      throw this.fail(pc, `compares ${this.describeTag(at)} with ${this.describeTag(bt)}; the result would depend on kernel addresses`);
    }
    // A valid pointer is a large non-zero address; model it as one so `!= 0`, `> 0` ... hold.
    if (at !== T_SCALAR) return compare(op, 0x7fff0000, 0, bh, bl);
    return compare(op, ah, al, 0x7fff0000, 0);
  }

  // ---------------------------------------------------------------- helpers and calls

  callHelper(pc: number, id: number): void {
    const h = HELPERS[id]!;
    // A helper that changes the packet (its bytes, or where it starts and ends) works on the machine's copy.
    if (h.changesPacket) this.writesAll();
    h.fn(this, pc);
    // The caller-saved argument registers are unreadable after a call.
    for (let r = 1; r <= 5; r++) this.tag[r] = T_UNINIT;
    if (h.changesPacket) this.invalidatePacketPointers();
  }

  private invalidatePacketPointers(): void {
    for (let r = 0; r <= 10; r++) if (this.tag[r] === T_PACKET) this.tag[r] = T_PACKET_STALE;
    const slots = this.stackLimit >> 3;
    for (let s = this.stackLow >> 3; s < slots; s++) if (this.stackSpill[s] === T_PACKET) this.stackSpill[s] = T_PACKET_STALE;
  }

  helperDef(id: number): HelperDef {
    return HELPERS[id]!;
  }

  /** Enters a bpf-to-bpf call: saves r6..r9 and the return point, gives the callee a fresh frame. */
  pushFrame(pc: number, returnTo: number): void {
    if (this.depth + 1 >= MAX_FRAMES) throw this.fail(pc, `calls deeper than ${MAX_FRAMES} frames`);
    const base = this.depth * FRAME_WORDS;
    this.frames[base] = returnTo;
    for (let r = 6; r <= 9; r++) {
      const k = base + 1 + (r - 6) * 3;
      this.frames[k] = this.lo[r]!;
      this.frames[k + 1] = this.hi[r]!;
      this.frames[k + 2] = this.tag[r]!;
      this.tag[r] = T_UNINIT;
    }
    this.depth++;
    const fp = STACK_SIZE * (this.depth + 1);
    this.stack.fill(0, fp - STACK_SIZE, fp);
    this.stackSpill.fill(0, (fp - STACK_SIZE) >> 3, fp >> 3);
    this.stackLimit = fp;
    this.lo[10] = fp;
    this.hi[10] = 0;
    this.tag[10] = T_STACK;
    this.budgetTick(pc);
  }

  /** Leaves a bpf-to-bpf call: restores r6..r9, returns the instruction to continue at. */
  popFrame(): number {
    this.depth--;
    const base = this.depth * FRAME_WORDS;
    for (let r = 6; r <= 9; r++) {
      const k = base + 1 + (r - 6) * 3;
      this.lo[r] = this.frames[k]!;
      this.hi[r] = this.frames[k + 1]!;
      this.tag[r] = this.frames[k + 2]!;
    }
    for (let r = 1; r <= 5; r++) this.tag[r] = T_UNINIT;
    const fp = STACK_SIZE * (this.depth + 1);
    this.stackLimit = fp;
    this.lo[10] = fp;
    this.hi[10] = 0;
    this.tag[10] = T_STACK;
    return this.frames[base]!;
  }

  budgetTick(pc: number): void {
    if (--this.budget < 0) throw this.fail(pc, `the run took more than ${LOOP_BUDGET} backward jumps and calls; the program does not terminate`);
  }

  /** Checks r0 at the final exit and returns the retval the kernel's test run reports. */
  finish(pc: number, t: number, l: number): number {
    if (t !== T_SCALAR) throw t === T_UNINIT ? this.uninit(pc, 0) : this.fail(pc, `exits with ${this.describeTag(t)} in r0; the return value must be a number`);
    return l >>> 0;
  }

  // ---------------------------------------------------------------- helper arguments

  argScalar(pc: number, reg: number, helper: string): number {
    const t = this.tag[reg]!;
    if (t !== T_SCALAR) throw t === T_UNINIT ? this.uninit(pc, reg) : this.fail(pc, `argument r${reg} of ${helper} must be a number, not ${this.describeTag(t)}`);
    return this.lo[reg]!;
  }

  argCtx(pc: number, reg: number, helper: string): void {
    const t = this.tag[reg]!;
    if (t !== T_CTX || (this.lo[reg]! | this.hi[reg]!) !== 0) {
      throw t === T_UNINIT ? this.uninit(pc, reg) : this.fail(pc, `argument r${reg} of ${helper} must be the context pointer, not ${this.describeTag(t)}`);
    }
  }

  argMap(pc: number, reg: number, helper: string): VmMap {
    const t = this.tag[reg]!;
    if (t !== T_MAP) throw t === T_UNINIT ? this.uninit(pc, reg) : this.fail(pc, `argument r${reg} of ${helper} must be a map, not ${this.describeTag(t)}`);
    return this.prog.maps[this.lo[reg]!]!;
  }

  /**
   * A memory argument of `len` bytes at the pointer in `reg`: checks it lies in one region
   * (stack, packet or map value) and returns its start in `rbuf`. For the stack, reading
   * spilled pointers is refused and writing clears them.
   */
  argMem(pc: number, reg: number, len: number, write: boolean, helper: string): number {
    const t = this.tag[reg]!, h = this.hi[reg]!, a = this.lo[reg]!;
    const what = write ? 'write' : 'read';
    if (t === T_PACKET) {
      const plen = this.pktEnd - this.pktStart;
      if (h !== a >> 31 || a < 0 || a + len > plen) throw this.outOfBounds(pc, what, len, t, h !== a >> 31, a, plen);
      // A helper writing into the packet (e.g. bpf_skb_load_bytes to a packet pointer) writes the machine's copy.
      if (write) this.writesAll();
      this.rbuf = this.pkt;
      return this.pktStart + a;
    }
    if (t === T_STACK) {
      if (h !== a >> 31 || a < 0 || a + len > this.stackLimit) throw this.outOfBounds(pc, what, len, t, h !== a >> 31, a, this.stackLimit);
      if (len > 0) {
        for (let s = a >> 3; s <= (a + len - 1) >> 3; s++) {
          if (this.stackSpill[s] === 0) continue;
          if (!write) throw this.fail(pc, `${helper} would read a pointer spilled to the stack at fp${(s << 3) - this.fp()}`);
          this.stackSpill[s] = 0;
        }
      }
      if (write && a < this.stackLow) this.stackLow = a;
      this.rbuf = this.stack;
      return a;
    }
    if (t >= T_VALUE) {
      const region = this.values[t - T_VALUE]!;
      if (h !== a >> 31 || a < 0 || a + len > region.length) throw this.outOfBounds(pc, what, len, t, h !== a >> 31, a, region.length);
      this.rbuf = region;
      return a;
    }
    if (t === T_UNINIT) throw this.uninit(pc, reg);
    throw this.fail(pc, `argument r${reg} of ${helper} must point to the stack, the packet or a map value, not ${this.describeTag(t)}`);
  }

  /**
   * bpf_map_lookup_elem with the map in r1 and the key on the stack at offset `a` (r2), the
   * JIT's inline case, without the register round trip of callHelper: returns r0's tag (r0's
   * value is 0 either way; T_SCALAR when there is no entry). A key reaching past the stack or
   * holding a spilled pointer goes through the helper, for its checks and messages.
   */
  mapLookupStackKey(pc: number, mapIndex: number, a: number): number {
    const map = this.prog.maps[mapIndex]!;
    const len = map.keySize;
    let plain = a + len <= this.stackLimit;
    if (plain && len > 0) {
      for (let s = a >> 3; s <= (a + len - 1) >> 3; s++) {
        if (this.stackSpill[s] !== 0) { plain = false; break; }
      }
    }
    if (!plain) {
      this.lo[1] = mapIndex; this.hi[1] = 0; this.tag[1] = T_MAP;
      this.lo[2] = a; this.hi[2] = 0; this.tag[2] = T_STACK;
      this.callHelper(pc, 1);
      return this.tag[0]!;
    }
    const v = map.lookupAt(this.stack, a, this.cpu);
    return v === null ? T_SCALAR : this.valueTag(map, v);
  }

  /** Gives a map value a region for this run and returns its tag. */
  valueTag(map: VmMap, bytes: Uint8Array): number {
    const i = this.valueCount++;
    this.values[i] = bytes;
    this.valueMaps[i] = map;
    return T_VALUE + i;
  }

  // ---------------------------------------------------------------- packet changes (helpers)

  get packetHeadroom(): number {
    return this.pktStart;
  }

  /** Moves the packet start by `delta` (negative grows it into the headroom); the caller checked limits. */
  moveStart(delta: number): void {
    this.pktStart += delta;
    if (this.pktStart < this.dirtyLow) this.dirtyLow = this.pktStart;
  }

  /** Sets the packet's end; the caller checked limits. */
  setEnd(end: number): void {
    this.pktEnd = end;
    if (end > this.dirtyHigh) this.dirtyHigh = end;
  }

  get hardEnd(): number {
    return this.pktHardEnd;
  }

  // ---------------------------------------------------------------- randomness and time

  /** Seeds the VM's bpf_get_prandom_u32 stream (xoshiro128**, state from splitmix32 of the seed). */
  seed(seed: number): void {
    let z = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      z = (z + 0x9e3779b9) | 0;
      let x = z;
      x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
      x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
      this.rng[i] = x ^ (x >>> 16);
    }
    if ((this.rng[0]! | this.rng[1]! | this.rng[2]! | this.rng[3]!) === 0) this.rng[0] = 1;
  }

  /** Next 32-bit draw of the VM's generator. */
  random(): number {
    const s = this.rng;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9);
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result >>> 0;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

const OP_NAMES: Record<number, string> = {
  [O.BPF_MUL]: 'multiplication', [O.BPF_DIV]: 'division', [O.BPF_OR]: 'or', [O.BPF_AND]: 'and', [O.BPF_LSH]: 'shift',
  [O.BPF_RSH]: 'shift', [O.BPF_NEG]: 'negation', [O.BPF_MOD]: 'modulo', [O.BPF_XOR]: 'xor', [O.BPF_ARSH]: 'shift',
  [O.BPF_END]: 'byte swap', [O.BPF_MOV]: '32-bit move',
};

/** A 64-bit conditional jump's test. */
export function compare(op: number, ah: number, al: number, bh: number, bl: number): boolean {
  switch (op) {
    case O.BPF_JEQ: return ah === bh && al === bl;
    case O.BPF_JNE: return ah !== bh || al !== bl;
    case O.BPF_JSET: return ((ah & bh) | (al & bl)) !== 0;
    case O.BPF_JGT: return I64.ucmp64(ah, al, bh, bl) > 0;
    case O.BPF_JGE: return I64.ucmp64(ah, al, bh, bl) >= 0;
    case O.BPF_JLT: return I64.ucmp64(ah, al, bh, bl) < 0;
    case O.BPF_JLE: return I64.ucmp64(ah, al, bh, bl) <= 0;
    case O.BPF_JSGT: return I64.scmp64(ah, al, bh, bl) > 0;
    case O.BPF_JSGE: return I64.scmp64(ah, al, bh, bl) >= 0;
    case O.BPF_JSLT: return I64.scmp64(ah, al, bh, bl) < 0;
    default: return I64.scmp64(ah, al, bh, bl) <= 0; // JSLE
  }
}

/** A 32-bit conditional jump's test (low halves only). */
export function compare32(op: number, a: number, b: number): boolean {
  switch (op) {
    case O.BPF_JEQ: return a === b;
    case O.BPF_JNE: return a !== b;
    case O.BPF_JSET: return (a & b) !== 0;
    case O.BPF_JGT: return (a >>> 0) > (b >>> 0);
    case O.BPF_JGE: return (a >>> 0) >= (b >>> 0);
    case O.BPF_JLT: return (a >>> 0) < (b >>> 0);
    case O.BPF_JLE: return (a >>> 0) <= (b >>> 0);
    case O.BPF_JSGT: return (a | 0) > (b | 0);
    case O.BPF_JSGE: return (a | 0) >= (b | 0);
    case O.BPF_JSLT: return (a | 0) < (b | 0);
    default: return (a | 0) <= (b | 0);
  }
}
