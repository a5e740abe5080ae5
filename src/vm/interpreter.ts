/**
 * The reference interpreter: one instruction at a time, straight from the decoded program,
 * every rule of eBPF spelled out once. The JIT must agree with it on every program.
 */
import * as O from '../bpf/opcodes.js';
import * as I64 from './int64.js';
import { type Machine, compare, compare32 } from './machine.js';
import { T_SCALAR, T_UNINIT, T_MAP, T_VALUE } from './regions.js';

/** Runs the program on the machine's current state (after `begin`); returns r0's low 32 bits, unsigned. */
export function interpret(m: Machine): number {
  const prog = m.prog;
  const insns = prog.insns;
  const target = prog.target;
  const lo = m.lo, hi = m.hi, tag = m.tag;
  m.resetRegisters();
  let pc = 0;
  for (;;) {
    const insn = insns[pc]!;
    const code = insn.code;
    const c = code & 0x07;
    switch (c) {
      case O.BPF_ALU64:
      case O.BPF_ALU: {
        alu(m, pc, c === O.BPF_ALU64);
        pc++;
        break;
      }
      case O.BPF_LDX: {
        const s = insn.src;
        const v = m.load(pc, tag[s]!, hi[s]!, lo[s]!, insn.off, O.sizeBytes(O.size(code)), O.mode(code) === O.BPF_MEMSX);
        lo[insn.dst] = v;
        hi[insn.dst] = m.rhi;
        tag[insn.dst] = m.rtag;
        pc++;
        break;
      }
      case O.BPF_ST: {
        const d = insn.dst;
        m.store(pc, tag[d]!, hi[d]!, lo[d]!, insn.off, O.sizeBytes(O.size(code)), T_SCALAR, insn.imm >> 31, insn.imm | 0);
        pc++;
        break;
      }
      case O.BPF_STX: {
        const d = insn.dst, s = insn.src;
        if (O.mode(code) === O.BPF_ATOMIC) m.atomic(pc);
        else m.store(pc, tag[d]!, hi[d]!, lo[d]!, insn.off, O.sizeBytes(O.size(code)), tag[s]!, hi[s]!, lo[s]!);
        pc++;
        break;
      }
      case O.BPF_LD: {
        // Only LD_IMM64 passes preparation.
        const d = insn.dst;
        const mi = prog.mapIndexOf[pc]!;
        if (mi < 0) {
          lo[d] = insn.imm | 0;
          hi[d] = (insn.imm2 ?? 0) | 0;
          tag[d] = T_SCALAR;
        } else if (prog.staticValueOf[pc]! >= 0) {
          lo[d] = insn.src === O.BPF_PSEUDO_MAP_VALUE || insn.src === O.BPF_PSEUDO_MAP_IDX_VALUE ? (insn.imm2 ?? 0) | 0 : 0;
          hi[d] = 0;
          tag[d] = T_VALUE + prog.staticValueOf[pc]!;
        } else {
          lo[d] = mi;
          hi[d] = 0;
          tag[d] = T_MAP;
        }
        pc++;
        break;
      }
      case O.BPF_JMP:
      case O.BPF_JMP32: {
        const op = O.op(code);
        if (op === O.BPF_EXIT) {
          if (m.depth === 0) return m.finish(pc, tag[0]!, lo[0]!);
          pc = m.popFrame();
          break;
        }
        if (op === O.BPF_CALL) {
          if (insn.src === O.BPF_PSEUDO_CALL) {
            m.pushFrame(pc, pc + 1);
            pc = target[pc]!;
          } else {
            m.callHelper(pc, insn.imm);
            pc++;
          }
          break;
        }
        let taken: boolean;
        if (op === O.BPF_JA) taken = true;
        else {
          const d = insn.dst;
          const isX = O.src(code) === O.BPF_X;
          const bt = isX ? tag[insn.src]! : T_SCALAR;
          const bl = isX ? lo[insn.src]! : insn.imm | 0;
          const bh = isX ? hi[insn.src]! : insn.imm >> 31;
          if (tag[d] !== T_SCALAR || bt !== T_SCALAR) taken = m.cmpSlow(pc, c === O.BPF_JMP, op, tag[d]!, hi[d]!, lo[d]!, bt, bh, bl);
          else taken = c === O.BPF_JMP ? compare(op, hi[d]!, lo[d]!, bh, bl) : compare32(op, lo[d]!, bl);
        }
        if (taken) {
          const t = target[pc]!;
          if (t <= pc) m.budgetTick(pc);
          pc = t;
        } else pc++;
        break;
      }
    }
  }
}

/** One ALU instruction, on the machine's registers. */
function alu(m: Machine, pc: number, is64: boolean): void {
  const insn = m.prog.insns[pc]!;
  const lo = m.lo, hi = m.hi, tag = m.tag;
  const d = insn.dst;
  const op = O.op(insn.code);
  const isX = O.src(insn.code) === O.BPF_X;

  if (op === O.BPF_END) {
    if (tag[d] !== T_SCALAR) throw tag[d] === T_UNINIT ? m.uninit(pc, d) : m.aluSlowError(pc, d);
    byteSwap(m, d, insn.imm, is64 || O.src(insn.code) === O.BPF_TO_BE);
    return;
  }
  if (op === O.BPF_NEG) {
    if (tag[d] !== T_SCALAR) throw tag[d] === T_UNINIT ? m.uninit(pc, d) : m.aluSlowError(pc, d);
    if (is64) { lo[d] = I64.neg64(hi[d]!, lo[d]!); hi[d] = I64.HI[0]!; }
    else { lo[d] = -lo[d]! | 0; hi[d] = 0; }
    return;
  }

  const st = isX ? tag[insn.src]! : T_SCALAR;
  const sl = isX ? lo[insn.src]! : insn.imm | 0;
  const sh = isX ? hi[insn.src]! : insn.imm >> 31;

  if (op === O.BPF_MOV) {
    if (st === T_UNINIT) throw m.uninit(pc, insn.src);
    if (is64) {
      if (isX && insn.off !== 0) {
        if (st !== T_SCALAR) throw m.aluSlowError(pc, insn.src);
        const v = insn.off === 8 ? (sl << 24) >> 24 : insn.off === 16 ? (sl << 16) >> 16 : sl;
        lo[d] = v; hi[d] = v >> 31; tag[d] = T_SCALAR;
      } else { lo[d] = sl; hi[d] = sh; tag[d] = st; }
    } else {
      if (st !== T_SCALAR) throw m.aluSlowError(pc, insn.src);
      lo[d] = isX && insn.off !== 0 ? (insn.off === 8 ? (sl << 24) >> 24 : (sl << 16) >> 16) : sl;
      hi[d] = 0;
      tag[d] = T_SCALAR;
    }
    return;
  }

  const dt = tag[d]!;
  if (dt !== T_SCALAR || st !== T_SCALAR) {
    lo[d] = m.aluSlow(pc, is64, op, dt, hi[d]!, lo[d]!, st, sh, sl);
    hi[d] = m.rhi;
    tag[d] = m.rtag;
    return;
  }
  const dl = lo[d]!, dh = hi[d]!;
  const signed = insn.off === 1;
  if (is64) {
    let r: number;
    switch (op) {
      case O.BPF_ADD: r = I64.add64(dh, dl, sh, sl); break;
      case O.BPF_SUB: r = I64.sub64(dh, dl, sh, sl); break;
      case O.BPF_MUL: r = I64.mul64(dh, dl, sh, sl); break;
      case O.BPF_DIV: r = signed ? I64.sdiv64(dh, dl, sh, sl) : I64.udiv64(dh, dl, sh, sl); break;
      case O.BPF_MOD: r = signed ? I64.smod64(dh, dl, sh, sl) : I64.umod64(dh, dl, sh, sl); break;
      case O.BPF_OR: r = dl | sl; I64.HI[0] = dh | sh; break;
      case O.BPF_AND: r = dl & sl; I64.HI[0] = dh & sh; break;
      case O.BPF_XOR: r = dl ^ sl; I64.HI[0] = dh ^ sh; break;
      case O.BPF_LSH: r = I64.shl64(dh, dl, sl); break;
      case O.BPF_RSH: r = I64.lshr64(dh, dl, sl); break;
      default: r = I64.ashr64(dh, dl, sl); break; // ARSH
    }
    lo[d] = r;
    hi[d] = I64.HI[0]!;
  } else {
    let r: number;
    switch (op) {
      case O.BPF_ADD: r = (dl + sl) | 0; break;
      case O.BPF_SUB: r = (dl - sl) | 0; break;
      case O.BPF_MUL: r = Math.imul(dl, sl); break;
      case O.BPF_DIV: r = signed ? I64.sdiv32(dl, sl) : I64.udiv32(dl, sl); break;
      case O.BPF_MOD: r = signed ? I64.smod32(dl, sl) : I64.umod32(dl, sl); break;
      case O.BPF_OR: r = dl | sl; break;
      case O.BPF_AND: r = dl & sl; break;
      case O.BPF_XOR: r = dl ^ sl; break;
      case O.BPF_LSH: r = dl << (sl & 31); break;
      case O.BPF_RSH: r = (dl >>> (sl & 31)) | 0; break;
      default: r = dl >> (sl & 31); break; // ARSH
    }
    lo[d] = r;
    hi[d] = 0;
  }
}

/** be16/32/64 (swap on this little-endian machine), le16/32/64 (truncate only), bswap16/32/64. */
function byteSwap(m: Machine, d: number, bits: number, swap: boolean): void {
  const lo = m.lo, hi = m.hi;
  const l = lo[d]!, h = hi[d]!;
  if (bits === 16) { lo[d] = swap ? I64.bswap16(l) : l & 0xffff; hi[d] = 0; }
  else if (bits === 32) { lo[d] = swap ? I64.bswap32(l) : l; hi[d] = 0; }
  else if (swap) { lo[d] = I64.bswap32(h); hi[d] = I64.bswap32(l); }
}
