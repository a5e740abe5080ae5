/**
 * The translator from eBPF to JavaScript: one function per program, built once (cached by
 * its generated source) and reused for every packet. Registers are local variables, three
 * per register (low half, high half, region tag); jump targets are cases of a switch inside
 * a loop, and straight-line code between them falls through. Scalar work is inline; memory
 * accesses inline the common packet and stack cases with their bounds checks and leave
 * everything else (pointers, context, map values, errors) to the Machine, so both engines
 * share one set of rules. Nothing is allocated per packet.
 */
import { setFlagsFromString } from 'node:v8';
import * as O from '../bpf/opcodes.js';
import * as I64 from './int64.js';
import type { PreparedProgram } from './program.js';
import { compare, type Machine } from './machine.js';
import { HELPERS } from './helpers.js';
import { contextLayout, FieldKind } from './context.js';
import { T_UNINIT, T_STACK, T_CTX, T_PACKET, T_PACKET_STALE, T_MAP, T_VALUE, STACK_SIZE } from './regions.js';

export interface CompiledProgram {
  run(m: Machine): number;
  /** The generated JavaScript. */
  readonly source: string;
}

/** Helper 1. */
const BPF_FUNC_MAP_LOOKUP_ELEM = 1;

type RunFn = (m: Machine) => number;
const cache = new Map<string, RunFn>();

/**
 * V8 never optimizes a function whose bytecode exceeds --max-optimized-bytecode-size (60 KiB by
 * default), and a few hundred eBPF instructions generate more than that: such a program then
 * runs in the baseline tier, about 14 times slower (a 415-instruction rule: 380 ms against 28 ms
 * for 600k packets). Raised once, process-wide, before the first function is built.
 */
const MAX_OPTIMIZED_BYTECODE = 1 << 20;
/**
 * The V8 flag the JIT sets. bin/netmangle sets it too (from the bundle manifest), before it
 * compiles a bundle: V8 checks a code cache against the flags of the moment, so a cache made at
 * exit after the JIT changed a flag would otherwise be refused at every next start.
 */
export const JIT_V8_FLAGS = `--max-optimized-bytecode-size=${MAX_OPTIMIZED_BYTECODE}`;
let optimizerLimitRaised = false;
function raiseOptimizerLimit(): void {
  if (optimizerLimitRaised) return;
  optimizerLimitRaised = true;
  setFlagsFromString(JIT_V8_FLAGS);
}

export function compileProgram(prog: PreparedProgram): CompiledProgram {
  const source = generate(prog);
  let run = cache.get(source);
  if (!run) {
    raiseOptimizerLimit();
    // The generated code only calls into I64 and the Machine it is given.
    run = new Function('I64', source)(I64) as RunFn;
    cache.set(source, run);
  }
  return { run, source };
}

/** Number of distinct compiled functions (for tests of the cache). */
export function compiledCount(): number {
  return cache.size;
}

const L = (r: number): string => `r${r}l`;
const H = (r: number): string => `r${r}h`;
const T = (r: number): string => `r${r}t`;
const u32 = (n: number): string => String(n >>> 0);
const i32 = (n: number): string => String(n | 0);

function sync(regs: number[]): string {
  return regs.map((r) => `lo[${r}] = ${L(r)}; hi[${r}] = ${H(r)}; tag[${r}] = ${T(r)};`).join(' ');
}
function reload(regs: number[]): string {
  return regs.map((r) => `${L(r)} = lo[${r}]; ${H(r)} = hi[${r}]; ${T(r)} = tag[${r}];`).join(' ');
}
const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** Operand of an ALU or jump instruction as JS expressions: low, high, tag. */
interface Operand { l: string; h: string; t: string; isImm: boolean }
function operand(insn: { code: number; src: number; imm: number }): Operand {
  if (O.src(insn.code) === O.BPF_X) return { l: L(insn.src), h: H(insn.src), t: T(insn.src), isImm: false };
  return { l: i32(insn.imm), h: i32(insn.imm >> 31), t: '0', isImm: true };
}

function generate(prog: PreparedProgram): string {
  const insns = prog.insns;
  const n = insns.length;
  const leaders = new Set<number>([0]);
  for (let i = 0; i < n; i++) {
    const t = prog.target[i]!;
    if (t >= 0) leaders.add(t);
    const insn = insns[i]!;
    if (insn.code === (O.BPF_JMP | O.BPF_CALL) && insn.src === O.BPF_PSEUDO_CALL) leaders.add(i + 1);
  }
  const out: string[] = [];
  const regDecl = range(0, 10)
    .map((r) => `${L(r)} = ${r === 10 ? STACK_SIZE : 0}, ${H(r)} = 0, ${T(r)} = ${r === 1 ? T_CTX : r === 10 ? T_STACK : T_UNINIT}`)
    .join(',\n    ');
  out.push(`'use strict';
return function run(m) {
  const lo = m.lo, hi = m.hi, tag = m.tag, HI = I64.HI;
  const sv = m.stackView, cv = m.ctxView, spill = m.stackSpill;
  let pv = m.pktView;
  let ps = m.pktStart, pe = m.pktEnd;
  let ${regDecl};
  let pc = 0, v = 0, a = 0, vb = m.pkt;
  for (;;) {
    switch (pc) {`);
  for (let i = 0; i < n; i++) {
    if (leaders.has(i)) out.push(`    case ${i}:`);
    out.push(`      // ${prog.slotOf[i]}: ${insnComment(prog, i)}`);
    out.push(indent(emit(prog, i)));
  }
  out.push(`    default:
      throw new Error('VM JIT: no code at instruction ' + pc);
    }
  }
};`);
  return out.join('\n');
}

function insnComment(prog: PreparedProgram, i: number): string {
  const x = prog.insns[i]!;
  return `code 0x${x.code.toString(16)} dst ${x.dst} src ${x.src} off ${x.off} imm ${x.imm}`.replace(/\*\//g, '');
}

function indent(code: string): string {
  return code.split('\n').map((l) => `      ${l}`).join('\n');
}

function emit(prog: PreparedProgram, i: number): string {
  const insn = prog.insns[i]!;
  const c = O.cls(insn.code);
  switch (c) {
    case O.BPF_ALU:
    case O.BPF_ALU64:
      return emitAlu(prog, i, c === O.BPF_ALU64);
    case O.BPF_LDX:
      return emitLoad(prog, i);
    case O.BPF_ST:
    case O.BPF_STX:
      return emitStore(prog, i);
    case O.BPF_LD:
      return emitLdImm64(prog, i);
    default:
      return emitJump(prog, i, c === O.BPF_JMP);
  }
}

function emitAlu(prog: PreparedProgram, pc: number, is64: boolean): string {
  const insn = prog.insns[pc]!;
  const d = insn.dst;
  const dl = L(d), dh = H(d), dt = T(d);
  const op = O.op(insn.code);
  const s = operand(insn);

  if (op === O.BPF_END) {
    const swap = is64 || O.src(insn.code) === O.BPF_TO_BE;
    const guard = `if (${dt} !== 0) throw m.aluSlowError(${pc}, ${d});`;
    if (insn.imm === 16) return `${guard} ${dl} = ${swap ? `((${dl} & 0xff) << 8) | ((${dl} >>> 8) & 0xff)` : `${dl} & 0xffff`}; ${dh} = 0;`;
    if (insn.imm === 32) return `${guard} ${swap ? `${dl} = I64.bswap32(${dl}); ` : ''}${dh} = 0;`;
    return swap ? `${guard} v = I64.bswap32(${dh}); ${dh} = I64.bswap32(${dl}); ${dl} = v;` : guard;
  }
  if (op === O.BPF_NEG) {
    const guard = `if (${dt} !== 0) throw m.aluSlowError(${pc}, ${d});`;
    return is64 ? `${guard} v = I64.neg64(${dh}, ${dl}); ${dh} = HI[0]; ${dl} = v;` : `${guard} ${dl} = -${dl} | 0; ${dh} = 0;`;
  }
  if (op === O.BPF_MOV) {
    if (s.isImm) return is64 ? `${dl} = ${s.l}; ${dh} = ${s.h}; ${dt} = 0;` : `${dl} = ${s.l}; ${dh} = 0; ${dt} = 0;`;
    const sx = insn.off;
    if (is64 && sx === 0) return `if (${s.t} === ${T_UNINIT}) throw m.uninit(${pc}, ${insn.src}); ${dl} = ${s.l}; ${dh} = ${s.h}; ${dt} = ${s.t};`;
    const guard = `if (${s.t} !== 0) throw m.aluSlowError(${pc}, ${insn.src});`;
    const ext = sx === 8 ? `(${s.l} << 24) >> 24` : sx === 16 ? `(${s.l} << 16) >> 16` : s.l;
    return is64 ? `${guard} ${dl} = ${ext}; ${dh} = ${dl} >> 31; ${dt} = 0;` : `${guard} ${dl} = ${ext}; ${dh} = 0; ${dt} = 0;`;
  }

  const guardCond = s.isImm ? `${dt} !== 0` : `(${dt} | ${s.t}) !== 0`;
  const slow = `${dl} = m.aluSlow(${pc}, ${is64}, ${op}, ${dt}, ${dh}, ${dl}, ${s.t}, ${s.h}, ${s.l}); ${dh} = m.rhi; ${dt} = m.rtag;`;
  if (is64 && (op === O.BPF_ADD || op === O.BPF_SUB)) return emitAddSub64(op, dl, dh, dt, s, slow);
  const signed = insn.off === 1;
  let fast: string;
  if (is64) {
    const call = (fn: string): string => `v = I64.${fn}(${dh}, ${dl}, ${s.h}, ${s.l}); ${dh} = HI[0]; ${dl} = v;`;
    switch (op) {
      case O.BPF_ADD: fast = `v = (${dl} + ${s.l}) | 0; ${dh} = (${dh} + ${s.h} + ((v >>> 0) < (${dl} >>> 0) ? 1 : 0)) | 0; ${dl} = v;`; break;
      case O.BPF_SUB: fast = `v = (${dl} - ${s.l}) | 0; ${dh} = (${dh} - ${s.h} - ((${dl} >>> 0) < (${s.l} >>> 0) ? 1 : 0)) | 0; ${dl} = v;`; break;
      case O.BPF_MUL: fast = call('mul64'); break;
      case O.BPF_DIV: fast = call(signed ? 'sdiv64' : 'udiv64'); break;
      case O.BPF_MOD: fast = call(signed ? 'smod64' : 'umod64'); break;
      case O.BPF_OR: fast = `${dl} |= ${s.l}; ${dh} |= ${s.h};`; break;
      case O.BPF_AND: fast = `${dl} &= ${s.l}; ${dh} &= ${s.h};`; break;
      case O.BPF_XOR: fast = `${dl} ^= ${s.l}; ${dh} ^= ${s.h};`; break;
      case O.BPF_LSH:
      case O.BPF_RSH:
      case O.BPF_ARSH:
        fast = s.isImm ? shiftImm64(op, dl, dh, insn.imm & 63) : `v = I64.${op === O.BPF_LSH ? 'shl64' : op === O.BPF_RSH ? 'lshr64' : 'ashr64'}(${dh}, ${dl}, ${s.l}); ${dh} = HI[0]; ${dl} = v;`;
        break;
      default:
        throw new Error(`VM JIT: ALU op ${op}`);
    }
  } else {
    const sh32 = (e: string): string => (s.isImm ? String(insn.imm & 31) : `(${e} & 31)`);
    switch (op) {
      case O.BPF_ADD: fast = `${dl} = (${dl} + ${s.l}) | 0;`; break;
      case O.BPF_SUB: fast = `${dl} = (${dl} - ${s.l}) | 0;`; break;
      case O.BPF_MUL: fast = `${dl} = Math.imul(${dl}, ${s.l});`; break;
      case O.BPF_DIV: fast = `${dl} = I64.${signed ? 'sdiv32' : 'udiv32'}(${dl}, ${s.l});`; break;
      case O.BPF_MOD: fast = `${dl} = I64.${signed ? 'smod32' : 'umod32'}(${dl}, ${s.l});`; break;
      case O.BPF_OR: fast = `${dl} |= ${s.l};`; break;
      case O.BPF_AND: fast = `${dl} &= ${s.l};`; break;
      case O.BPF_XOR: fast = `${dl} ^= ${s.l};`; break;
      case O.BPF_LSH: fast = `${dl} = ${dl} << ${sh32(s.l)};`; break;
      case O.BPF_RSH: fast = `${dl} = (${dl} >>> ${sh32(s.l)}) | 0;`; break;
      case O.BPF_ARSH: fast = `${dl} = ${dl} >> ${sh32(s.l)};`; break;
      default:
        throw new Error(`VM JIT: ALU op ${op}`);
    }
    fast += ` ${dh} = 0;`;
  }
  return `if (${guardCond}) { ${slow} } else { ${fast} }`;
}

/** A tag that takes pointer arithmetic: stack, context, packet or a map value (not a map, a stale packet pointer or nothing). */
const pointerOk = (t: string): string => `((${t} >= ${T_STACK} && ${t} <= ${T_PACKET}) || ${t} >= ${T_VALUE})`;

/**
 * 64-bit add and subtract. Besides numbers, the cases Machine.aluSlow allows are done inline
 * (the arithmetic is the same 64-bit sum; only the tag differs): pointer plus or minus a
 * number keeps the pointer's tag, number plus pointer takes it, and the difference of two
 * pointers into one region is a number. Everything else, errors included, goes to aluSlow.
 */
function emitAddSub64(op: number, dl: string, dh: string, dt: string, s: Operand, slow: string): string {
  const fast = op === O.BPF_ADD
    ? `v = (${dl} + ${s.l}) | 0; ${dh} = (${dh} + ${s.h} + ((v >>> 0) < (${dl} >>> 0) ? 1 : 0)) | 0; ${dl} = v;`
    : `v = (${dl} - ${s.l}) | 0; ${dh} = (${dh} - ${s.h} - ((${dl} >>> 0) < (${s.l} >>> 0) ? 1 : 0)) | 0; ${dl} = v;`;
  if (s.isImm) return `if (${dt} === 0 || ${pointerOk(dt)}) { ${fast} } else { ${slow} }`;
  const cases = [`if ((${dt} | ${s.t}) === 0 || (${s.t} === 0 && ${pointerOk(dt)})) { ${fast} }`];
  if (op === O.BPF_ADD) cases.push(`else if (${dt} === 0 && ${pointerOk(s.t)}) { ${fast} ${dt} = ${s.t}; }`);
  else cases.push(`else if (${dt} === ${s.t} && ${pointerOk(dt)}) { ${fast} ${dt} = 0; }`);
  cases.push(`else { ${slow} }`);
  return cases.join(' ');
}

function shiftImm64(op: number, dl: string, dh: string, n: number): string {
  if (n === 0) return '';
  if (op === O.BPF_LSH) {
    if (n < 32) return `${dh} = (${dh} << ${n}) | (${dl} >>> ${32 - n}); ${dl} = ${dl} << ${n};`;
    return `${dh} = ${dl} << ${n - 32}; ${dl} = 0;`;
  }
  if (op === O.BPF_RSH) {
    if (n < 32) return `${dl} = ((${dl} >>> ${n}) | (${dh} << ${32 - n})) | 0; ${dh} = (${dh} >>> ${n}) | 0;`;
    return `${dl} = (${dh} >>> ${n - 32}) | 0; ${dh} = 0;`;
  }
  if (n < 32) return `${dl} = ((${dl} >>> ${n}) | (${dh} << ${32 - n})) | 0; ${dh} = ${dh} >> ${n};`;
  return `${dl} = ${dh} >> ${n - 32}; ${dh} = ${dh} >> 31;`;
}

/** JS reading `size` bytes at `p` from DataView `view` into (lo expression, hi expression). */
function readView(view: string, p: string, size: number, signed: boolean): { pre: string; l: string; h: string } {
  switch (size) {
    case 1: return { pre: `v = ${view}.${signed ? 'getInt8' : 'getUint8'}(${p});`, l: 'v', h: signed ? 'v >> 31' : '0' };
    case 2: return { pre: `v = ${view}.${signed ? 'getInt16' : 'getUint16'}(${p}, true);`, l: 'v', h: signed ? 'v >> 31' : '0' };
    case 4: return { pre: `v = ${view}.getInt32(${p}, true);`, l: 'v', h: signed ? 'v >> 31' : '0' };
    default: return { pre: `v = ${view}.getInt32(${p} + 4, true);`, l: `${view}.getInt32(${p}, true)`, h: 'v' };
  }
}

function writeView(view: string, p: string, size: number, l: string, h: string): string {
  switch (size) {
    case 1: return `${view}.setUint8(${p}, ${l} & 0xff);`;
    case 2: return `${view}.setUint16(${p}, ${l} & 0xffff, true);`;
    case 4: return `${view}.setInt32(${p}, ${l}, true);`;
    default: return `${view}.setInt32(${p}, ${l}, true); ${view}.setInt32(${p} + 4, ${h}, true);`;
  }
}

function emitLoad(prog: PreparedProgram, pc: number): string {
  const insn = prog.insns[pc]!;
  const size = O.sizeBytes(O.size(insn.code));
  const signed = O.mode(insn.code) === O.BPF_MEMSX;
  const s = insn.src, d = insn.dst;
  const assign = (r: { pre: string; l: string; h: string }): string =>
    size === 8 ? `${r.pre} ${L(d)} = ${r.l}; ${H(d)} = v; ${T(d)} = 0;` : `${r.pre} ${L(d)} = v; ${H(d)} = ${r.h}; ${T(d)} = 0;`;
  const inRange = (limit: string): string => `${H(s)} === (${L(s)} >> 31) && a >= 0 && a + ${size} <= ${limit}`;
  const last = size === 1 ? 'a' : `(a + ${size - 1})`;
  const ctxRead = ctxLoadAtOffset(prog, insn.off, size, signed, d);
  return [
    `a = ${L(s)} + ${insn.off};`,
    `if (${T(s)} === ${T_PACKET} && ${inRange('pe - ps')}) { ${assign(readView('pv', 'ps + a', size, signed))} }`,
    `else if (${T(s)} === ${T_STACK} && ${inRange('m.stackLimit')} && spill[a >> 3] === 0 && spill[${last} >> 3] === 0) { ${assign(readView('sv', 'a', size, signed))} }`,
    // A whole, aligned 8-byte fill of a spilled pointer restores the pointer.
    size === 8 && !signed
      ? `else if (${T(s)} === ${T_STACK} && ${inRange('m.stackLimit')} && (a & 7) === 0) { ${H(d)} = sv.getInt32(a + 4, true); ${L(d)} = sv.getInt32(a, true); ${T(d)} = spill[a >> 3]; }`
      : '',
    `else if (${T(s)} >= ${T_VALUE} && ${inRange(`(vb = m.values[${T(s)} - ${T_VALUE}]).length`)}) { ${readValueBytes(size, signed, d)} }`,
    ctxRead ? `else if (${T(s)} === ${T_CTX} && (${L(s)} | ${H(s)}) === 0) { ${ctxRead} }` : '',
    `else { ${L(d)} = m.load(${pc}, ${T(s)}, ${H(s)}, ${L(s)}, ${insn.off}, ${size}, ${signed}); ${H(d)} = m.rhi; ${T(d)} = m.rtag; }`,
  ].filter(Boolean).join('\n');
}

/** JS reading `size` little-endian bytes at `a` of the map value `vb` into register `d` (map values have no DataView). */
function readValueBytes(size: number, signed: boolean, d: number): string {
  const b = (k: number): string => (k === 0 ? 'vb[a]' : `vb[a + ${k}]`);
  const word = (k: number): string => `(${b(k)} | (${b(k + 1)} << 8) | (${b(k + 2)} << 16) | (${b(k + 3)} << 24))`;
  switch (size) {
    case 1: return `${L(d)} = ${signed ? `(${b(0)} << 24) >> 24` : b(0)}; ${H(d)} = ${signed ? `${L(d)} >> 31` : '0'}; ${T(d)} = 0;`;
    case 2: return `${L(d)} = ${signed ? `((${b(0)} | (${b(1)} << 8)) << 16) >> 16` : `${b(0)} | (${b(1)} << 8)`}; ${H(d)} = ${signed ? `${L(d)} >> 31` : '0'}; ${T(d)} = 0;`;
    case 4: return `${L(d)} = ${word(0)}; ${H(d)} = ${signed ? `${L(d)} >> 31` : '0'}; ${T(d)} = 0;`;
    default: return `${H(d)} = ${word(4)}; ${L(d)} = ${word(0)}; ${T(d)} = 0;`;
  }
}

/** JS writing the low `size` bytes of (h, l) little-endian at `a` of the map value `vb`. */
function writeValueBytes(size: number, l: string, h: string): string {
  const parts = [`vb[a] = ${l};`];
  if (size >= 2) parts.push(`vb[a + 1] = ${l} >>> 8;`);
  if (size >= 4) parts.push(`vb[a + 2] = ${l} >>> 16; vb[a + 3] = ${l} >>> 24;`);
  if (size === 8) parts.push(`vb[a + 4] = ${h}; vb[a + 5] = ${h} >>> 8; vb[a + 6] = ${h} >>> 16; vb[a + 7] = ${h} >>> 24;`);
  return parts.join(' ');
}

/**
 * A load of `size` bytes at offset `off` of the context, resolved when the code is generated
 * (the base is the context pointer itself, offset 0): data and data_end become packet
 * pointers, stored fields read the context's bytes. Undefined for anything Machine.load must
 * judge (bad offsets, partial pointer fields, the packet length).
 */
function ctxLoadAtOffset(prog: PreparedProgram, off: number, size: number, signed: boolean, d: number): string | undefined {
  const layout = contextLayout(prog.type);
  if (off < 0 || off + size > layout.size) return undefined;
  const field = layout.byOffset[off];
  if (!field || layout.byOffset[off + size - 1] !== field) return undefined;
  switch (field.kind) {
    case FieldKind.Data:
    case FieldKind.DataMeta:
      if (size !== 4 || off !== field.offset) return undefined;
      return `${L(d)} = 0; ${H(d)} = 0; ${T(d)} = ${T_PACKET};`;
    case FieldKind.DataEnd:
      if (size !== 4 || off !== field.offset) return undefined;
      return `${L(d)} = pe - ps; ${H(d)} = 0; ${T(d)} = ${T_PACKET};`;
    case FieldKind.Read:
    case FieldKind.ReadWrite: {
      const r = readView('cv', String(off), size, signed);
      return size === 8 ? `${r.pre} ${L(d)} = ${r.l}; ${H(d)} = v; ${T(d)} = 0;` : `${r.pre} ${L(d)} = v; ${H(d)} = ${r.h}; ${T(d)} = 0;`;
    }
    default:
      return undefined;
  }
}

function emitStore(prog: PreparedProgram, pc: number): string {
  const insn = prog.insns[pc]!;
  const size = O.sizeBytes(O.size(insn.code));
  const d = insn.dst;
  if (O.cls(insn.code) === O.BPF_STX && O.mode(insn.code) === O.BPF_ATOMIC) {
    const regs = [...new Set([0, d, insn.src])];
    return `${sync(regs)} m.atomic(${pc}); ${reload(regs)}`;
  }
  const isImm = O.cls(insn.code) === O.BPF_ST;
  const vl = isImm ? i32(insn.imm) : L(insn.src);
  const vh = isImm ? i32(insn.imm >> 31) : H(insn.src);
  const vt = isImm ? '0' : T(insn.src);
  const scalar = isImm ? '' : `${vt} === 0 && `;
  const inRange = (limit: string): string => `${H(d)} === (${L(d)} >> 31) && a >= 0 && a + ${size} <= ${limit}`;
  const last = size === 1 ? 'a' : `(a + ${size - 1})`;
  const lines = [`a = ${L(d)} + ${insn.off};`];
  const packetWritable = prog.type !== 'socket_filter';
  lines.push(
    // The first store to the packet moves it into the machine's own buffer (Machine.makeWritable);
    // every store widens the range of bytes written (Machine.writtenLow/High).
    `${packetWritable ? `if (${scalar}${T(d)} === ${T_PACKET} && ${inRange('pe - ps')}) { if (!m.written) { m.makeWritable(); pv = m.pktView; ps = m.pktStart; pe = m.pktEnd; } if (a < m.writtenLow) m.writtenLow = a; if (a + ${size} > m.writtenHigh) m.writtenHigh = a + ${size}; ${writeView('pv', 'ps + a', size, vl, vh)} }\nelse ` : ''}` +
      `if (${scalar}${T(d)} === ${T_STACK} && ${inRange('m.stackLimit')}) { if (a < m.stackLow) m.stackLow = a; spill[a >> 3] = 0; spill[${last} >> 3] = 0; ${writeView('sv', 'a', size, vl, vh)} }`,
    // A pointer spilled whole to an aligned stack slot: the slot remembers its tag.
    !isImm && size === 8
      ? `else if (${vt} !== ${T_UNINIT} && ${T(d)} === ${T_STACK} && ${inRange('m.stackLimit')} && (a & 7) === 0) { if (a < m.stackLow) m.stackLow = a; spill[a >> 3] = ${vt}; ${writeView('sv', 'a', size, vl, vh)} }`
      : '',
    `else if (${scalar}${T(d)} >= ${T_VALUE} && ${inRange(`(vb = m.values[${T(d)} - ${T_VALUE}]).length`)}) { ${writeValueBytes(size, vl, vh)} }`,
    `else { m.store(${pc}, ${T(d)}, ${H(d)}, ${L(d)}, ${insn.off}, ${size}, ${vt}, ${vh}, ${vl}); pv = m.pktView; ps = m.pktStart; pe = m.pktEnd; }`,
  );
  return lines.filter(Boolean).join('\n');
}

function emitLdImm64(prog: PreparedProgram, pc: number): string {
  const insn = prog.insns[pc]!;
  const d = insn.dst;
  const mi = prog.mapIndexOf[pc]!;
  if (mi < 0) return `${L(d)} = ${i32(insn.imm)}; ${H(d)} = ${i32(insn.imm2 ?? 0)}; ${T(d)} = 0;`;
  const sv = prog.staticValueOf[pc]!;
  if (sv >= 0) return `${L(d)} = ${i32(insn.imm2 ?? 0)}; ${H(d)} = 0; ${T(d)} = ${T_VALUE + sv};`;
  return `${L(d)} = ${mi}; ${H(d)} = 0; ${T(d)} = ${T_MAP};`;
}

function cond64(op: number, a: Operand, b: Operand): string {
  const ul = (x: Operand, e: string): string => (x.isImm ? u32(Number(e)) : `(${e} >>> 0)`);
  const uh = ul;
  const lt = (x: Operand, y: Operand, eq: boolean): string =>
    `(${uh(x, x.h)} < ${uh(y, y.h)} || (${x.h} === ${y.h} && ${ul(x, x.l)} ${eq ? '<=' : '<'} ${ul(y, y.l)}))`;
  const slt = (x: Operand, y: Operand, eq: boolean): string =>
    `(${x.h} < ${y.h} || (${x.h} === ${y.h} && ${ul(x, x.l)} ${eq ? '<=' : '<'} ${ul(y, y.l)}))`;
  switch (op) {
    case O.BPF_JEQ: return `(${a.l} === ${b.l} && ${a.h} === ${b.h})`;
    case O.BPF_JNE: return `(${a.l} !== ${b.l} || ${a.h} !== ${b.h})`;
    case O.BPF_JSET: return `(((${a.l} & ${b.l}) | (${a.h} & ${b.h})) !== 0)`;
    case O.BPF_JLT: return lt(a, b, false);
    case O.BPF_JLE: return lt(a, b, true);
    case O.BPF_JGT: return lt(b, a, false);
    case O.BPF_JGE: return lt(b, a, true);
    case O.BPF_JSLT: return slt(a, b, false);
    case O.BPF_JSLE: return slt(a, b, true);
    case O.BPF_JSGT: return slt(b, a, false);
    default: return slt(b, a, true); // JSGE
  }
}

function cond32(op: number, a: Operand, b: Operand): string {
  const u = (x: Operand): string => (x.isImm ? u32(Number(x.l)) : `(${x.l} >>> 0)`);
  switch (op) {
    case O.BPF_JEQ: return `(${a.l} === ${b.l})`;
    case O.BPF_JNE: return `(${a.l} !== ${b.l})`;
    case O.BPF_JSET: return `((${a.l} & ${b.l}) !== 0)`;
    case O.BPF_JLT: return `(${u(a)} < ${u(b)})`;
    case O.BPF_JLE: return `(${u(a)} <= ${u(b)})`;
    case O.BPF_JGT: return `(${u(a)} > ${u(b)})`;
    case O.BPF_JGE: return `(${u(a)} >= ${u(b)})`;
    case O.BPF_JSLT: return `(${a.l} < ${b.l})`;
    case O.BPF_JSLE: return `(${a.l} <= ${b.l})`;
    case O.BPF_JSGT: return `(${a.l} > ${b.l})`;
    default: return `(${a.l} >= ${b.l})`;
  }
}

function emitJump(prog: PreparedProgram, pc: number, is64: boolean): string {
  const insn = prog.insns[pc]!;
  const op = O.op(insn.code);
  const target = prog.target[pc]!;
  const go = `${target <= pc ? `m.budgetTick(${pc}); ` : ''}pc = ${target}; continue;`;
  if (op === O.BPF_EXIT) {
    const ret = `return m.finish(${pc}, ${T(0)}, ${L(0)});`;
    if (!prog.hasLocalCalls) return ret;
    return `if (m.depth > 0) { pc = m.popFrame(); ${reload(range(6, 10))} r1t = r2t = r3t = r4t = r5t = ${T_UNINIT}; continue; }\n${ret}`;
  }
  if (op === O.BPF_CALL) {
    if (insn.src === O.BPF_PSEUDO_CALL) {
      return `${sync(range(1, 10))} m.pushFrame(${pc}, ${pc + 1}); ${reload(range(6, 10))} pc = ${target}; continue;`;
    }
    const h = HELPERS[insn.imm]!;
    const touched = h.changesPacket ? [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] : [1, 2, 3, 4, 5];
    // bpf_map_lookup_elem with a map and a key on the stack (how compiled rules reach their state)
    // inline; anything else through callHelper.
    const lookupInline = insn.imm === BPF_FUNC_MAP_LOOKUP_ELEM && !h.changesPacket
      ? `if (${T(1)} === ${T_MAP} && ${T(2)} === ${T_STACK} && ${H(2)} === 0 && ${L(2)} >= 0) { ${T(0)} = m.mapLookupStackKey(${pc}, ${L(1)}, ${L(2)}); ${L(0)} = 0; ${H(0)} = 0; r1t = r2t = r3t = r4t = r5t = ${T_UNINIT}; } else {`
      : '';
    return [
      lookupInline,
      `${sync(touched)}`,
      `m.callHelper(${pc}, ${insn.imm});`,
      `${reload(h.changesPacket ? [0, 6, 7, 8, 9] : [0])} r1t = r2t = r3t = r4t = r5t = ${T_UNINIT};`,
      // Any helper may have moved the packet into the machine's buffer (one writing into it through a pointer argument too).
      'pv = m.pktView; ps = m.pktStart; pe = m.pktEnd;',
      lookupInline ? '}' : '',
    ].filter(Boolean).join('\n');
  }
  if (op === O.BPF_JA) return go;
  const a: Operand = { l: L(insn.dst), h: H(insn.dst), t: T(insn.dst), isImm: false };
  const b = operand(insn);
  // Two pointers into one region compare their offsets, as Machine.cmpSlow does; for registers
  // with equal tags that are neither unwritten nor stale the 64-bit test is the plain one.
  const sameRegion = is64 && !b.isImm && op !== O.BPF_JSET;
  const guard = b.isImm ? `${a.t} !== 0` : sameRegion ? `${a.t} !== ${b.t} || ${a.t} === ${T_UNINIT} || ${a.t} === ${T_PACKET_STALE}` : `(${a.t} | ${b.t}) !== 0`;
  const fast = is64 ? cond64(op, a, b) : cond32(op, a, b);
  if (is64 && b.isImm && insn.imm === 0 && op !== O.BPF_JSET) {
    // A pointer against 0 (a null check): Machine.cmpSlow models a valid pointer as one large
    // address, so the outcome is fixed per jump and known now.
    const pointerVsZero = compare(op, 0x7fff0000, 0, 0, 0);
    return `if ((${a.t} === 0) ? ${fast} : (${a.t} !== ${T_UNINIT} && ${a.t} !== ${T_PACKET_STALE}) ? ${pointerVsZero} : m.cmpSlow(${pc}, ${is64}, ${op}, ${a.t}, ${a.h}, ${a.l}, ${b.t}, ${b.h}, ${b.l})) { ${go} }`;
  }
  return `if ((${guard}) ? m.cmpSlow(${pc}, ${is64}, ${op}, ${a.t}, ${a.h}, ${a.l}, ${b.t}, ${b.h}, ${b.l}) : ${fast}) { ${go} }`;
}

