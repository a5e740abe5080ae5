/**
 * One eBPF instruction and its 8-byte wire format (little-endian, as the kernel on
 * x86-64 and arm64 expects): code u8, dst_reg:4 | src_reg:4, off s16, imm s32.
 * A 64-bit immediate load occupies two slots; here it is one Insn whose `imm2` holds the
 * upper 32 bits (the imm of the second slot).
 */
import { LD_IMM64 } from './opcodes.js';

export interface Insn {
  code: number;
  dst: number;
  src: number;
  /** Signed 16-bit offset. */
  off: number;
  /** Signed 32-bit immediate. */
  imm: number;
  /** Upper 32 bits of a LD_IMM64 constant (signed 32-bit), absent otherwise. */
  imm2?: number;
}

export const INSN_SIZE = 8;

/** Number of 8-byte slots an instruction occupies. */
export function slots(insn: Insn): 1 | 2 {
  return insn.code === LD_IMM64 ? 2 : 1;
}

/** Total slot count of a sequence (what the kernel calls insn_cnt). */
export function slotCount(insns: readonly Insn[]): number {
  let n = 0;
  for (const i of insns) n += slots(i);
  return n;
}

export function encode(insns: readonly Insn[]): Uint8Array {
  const out = new Uint8Array(slotCount(insns) * INSN_SIZE);
  const view = new DataView(out.buffer);
  let p = 0;
  for (const i of insns) {
    checkFields(i);
    view.setUint8(p, i.code);
    view.setUint8(p + 1, ((i.src & 0xf) << 4) | (i.dst & 0xf));
    view.setInt16(p + 2, i.off, true);
    view.setInt32(p + 4, i.imm | 0, true);
    p += INSN_SIZE;
    if (i.code === LD_IMM64) {
      // Second slot: all zero but imm.
      view.setInt32(p + 4, (i.imm2 ?? 0) | 0, true);
      p += INSN_SIZE;
    }
  }
  return out;
}

export class DecodeError extends Error {}

export function decode(bytes: Uint8Array): Insn[] {
  if (bytes.length % INSN_SIZE !== 0) {
    throw new DecodeError(`bytecode length ${bytes.length} is not a multiple of ${INSN_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Insn[] = [];
  for (let p = 0; p < bytes.length; p += INSN_SIZE) {
    const code = view.getUint8(p);
    const regs = view.getUint8(p + 1);
    const insn: Insn = { code, dst: regs & 0xf, src: regs >> 4, off: view.getInt16(p + 2, true), imm: view.getInt32(p + 4, true) };
    if (code === LD_IMM64) {
      if (p + INSN_SIZE >= bytes.length) {
        throw new DecodeError(`64-bit immediate load at slot ${p / INSN_SIZE} has no second slot`);
      }
      insn.imm2 = view.getInt32(p + INSN_SIZE + 4, true);
      p += INSN_SIZE;
    }
    out.push(insn);
  }
  return out;
}

function checkFields(i: Insn): void {
  if (!(i.code >= 0 && i.code <= 0xff && Number.isInteger(i.code))) throw new RangeError(`bad opcode ${i.code}`);
  if (!(i.dst >= 0 && i.dst <= 15 && i.src >= 0 && i.src <= 15)) throw new RangeError(`bad register in ${JSON.stringify(i)}`);
  if (!(Number.isInteger(i.off) && i.off >= -32768 && i.off <= 32767)) throw new RangeError(`offset ${i.off} does not fit 16 bits`);
  if (!(Number.isInteger(i.imm) && i.imm >= -0x80000000 && i.imm <= 0xffffffff)) throw new RangeError(`immediate ${i.imm} does not fit 32 bits`);
  const hi = i.imm2 ?? 0;
  if (!(Number.isInteger(hi) && hi >= -0x80000000 && hi <= 0xffffffff)) throw new RangeError(`upper immediate ${hi} does not fit 32 bits`);
}

/** The 64-bit constant of a LD_IMM64 as a signed BigInt (for display and tests, not hot paths). */
export function imm64(i: Insn): bigint {
  return (BigInt(i.imm2 ?? 0) << 32n) | BigInt(i.imm >>> 0);
}
