/**
 * 64-bit integer arithmetic on pairs of int32 halves (hi, lo), without BigInt, for the
 * interpreter and the JavaScript the JIT emits. Every function returns the low half and
 * leaves the high half in `HI[0]` (a shared cell, so nothing is allocated per call).
 * Halves are always kept as int32 (`| 0`); unsigned views are taken with `>>> 0`.
 */

/** High half of the last result. */
export const HI = new Int32Array(1);
/** Remainder (hi, lo) left by udivmod64. */
const REM = new Int32Array(2);

const TWO32 = 4294967296;

/** High 32 bits of the unsigned 64-bit product of two 32-bit values. */
export function mulhiU32(a: number, b: number): number {
  a >>>= 0;
  b >>>= 0;
  const a0 = a & 0xffff, a1 = a >>> 16, b0 = b & 0xffff, b1 = b >>> 16;
  const mid = a0 * b1 + a1 * b0 + ((a0 * b0) >>> 16); // < 2^34, exact in a double
  return (a1 * b1 + Math.floor(mid / 65536)) | 0;
}

export function add64(ahi: number, alo: number, bhi: number, blo: number): number {
  const lo = (alo + blo) | 0;
  HI[0] = (ahi + bhi + ((lo >>> 0) < (alo >>> 0) ? 1 : 0)) | 0;
  return lo;
}

export function sub64(ahi: number, alo: number, bhi: number, blo: number): number {
  const lo = (alo - blo) | 0;
  HI[0] = (ahi - bhi - ((alo >>> 0) < (blo >>> 0) ? 1 : 0)) | 0;
  return lo;
}

export function neg64(hi: number, lo: number): number {
  return sub64(0, 0, hi, lo);
}

export function mul64(ahi: number, alo: number, bhi: number, blo: number): number {
  HI[0] = (mulhiU32(alo, blo) + Math.imul(alo, bhi) + Math.imul(ahi, blo)) | 0;
  return Math.imul(alo, blo);
}

/** Unsigned compare: -1, 0 or 1. */
export function ucmp64(ahi: number, alo: number, bhi: number, blo: number): number {
  if (ahi !== bhi) return (ahi >>> 0) < (bhi >>> 0) ? -1 : 1;
  if (alo !== blo) return (alo >>> 0) < (blo >>> 0) ? -1 : 1;
  return 0;
}

/** Signed compare: -1, 0 or 1. */
export function scmp64(ahi: number, alo: number, bhi: number, blo: number): number {
  if (ahi !== bhi) return ahi < bhi ? -1 : 1;
  if (alo !== blo) return (alo >>> 0) < (blo >>> 0) ? -1 : 1;
  return 0;
}

export function shl64(hi: number, lo: number, n: number): number {
  n &= 63;
  if (n === 0) { HI[0] = hi; return lo; }
  if (n < 32) { HI[0] = (hi << n) | (lo >>> (32 - n)); return lo << n; }
  HI[0] = lo << (n - 32);
  return 0;
}

export function lshr64(hi: number, lo: number, n: number): number {
  n &= 63;
  if (n === 0) { HI[0] = hi; return lo; }
  if (n < 32) { HI[0] = hi >>> n | 0; return ((lo >>> n) | (hi << (32 - n))) | 0; }
  HI[0] = 0;
  return (hi >>> (n - 32)) | 0;
}

export function ashr64(hi: number, lo: number, n: number): number {
  n &= 63;
  if (n === 0) { HI[0] = hi; return lo; }
  if (n < 32) { HI[0] = hi >> n; return ((lo >>> n) | (hi << (32 - n))) | 0; }
  HI[0] = hi >> 31;
  return hi >> (n - 32);
}

/**
 * Unsigned 64-bit division, divisor non-zero: returns the quotient (low half, HI[0] high
 * half) and leaves the remainder in REM. Values below 2^32 take one double division; the
 * rest, rare in compiled rules, go through exact shift-and-subtract long division.
 */
function udivmod64(nhi: number, nlo: number, dhi: number, dlo: number): number {
  if (nhi === 0 && dhi === 0) {
    const n = nlo >>> 0, d = dlo >>> 0;
    const q = Math.floor(n / d);
    REM[0] = 0; REM[1] = (n - q * d) | 0;
    HI[0] = 0;
    return q | 0;
  }
  if (ucmp64(nhi, nlo, dhi, dlo) < 0) {
    REM[0] = nhi; REM[1] = nlo;
    HI[0] = 0;
    return 0;
  }
  let qhi = 0, qlo = 0, rhi = 0, rlo = 0;
  for (let i = 63; i >= 0; i--) {
    const bit = i >= 32 ? (nhi >>> (i - 32)) & 1 : (nlo >>> i) & 1;
    const overflow = rhi < 0; // the shift below pushes a 1 out: r >= 2^64 > d
    rhi = (rhi << 1) | (rlo >>> 31);
    rlo = (rlo << 1) | bit;
    if (overflow || ucmp64(rhi, rlo, dhi, dlo) >= 0) {
      rlo = sub64(rhi, rlo, dhi, dlo);
      rhi = HI[0]!;
      if (i >= 32) qhi |= 1 << (i - 32);
      else qlo |= 1 << i;
    }
  }
  REM[0] = rhi; REM[1] = rlo;
  HI[0] = qhi;
  return qlo;
}

/** Unsigned division; the kernel defines x / 0 = 0. */
export function udiv64(ahi: number, alo: number, bhi: number, blo: number): number {
  if ((bhi | blo) === 0) { HI[0] = 0; return 0; }
  return udivmod64(ahi, alo, bhi, blo);
}

/** Unsigned modulo; the kernel defines x % 0 = x. */
export function umod64(ahi: number, alo: number, bhi: number, blo: number): number {
  if ((bhi | blo) === 0) { HI[0] = ahi; return alo; }
  udivmod64(ahi, alo, bhi, blo);
  HI[0] = REM[0]!;
  return REM[1]!;
}

/** Signed division truncating toward zero; x / 0 = 0 and INT64_MIN / -1 = INT64_MIN, as the kernel. */
export function sdiv64(ahi: number, alo: number, bhi: number, blo: number): number {
  if ((bhi | blo) === 0) { HI[0] = 0; return 0; }
  const negA = ahi < 0, negB = bhi < 0;
  let xlo = alo, xhi = ahi, ylo = blo, yhi = bhi;
  if (negA) { xlo = neg64(ahi, alo); xhi = HI[0]!; }
  if (negB) { ylo = neg64(bhi, blo); yhi = HI[0]!; }
  const qlo = udivmod64(xhi, xlo, yhi, ylo);
  if (negA === negB) return qlo;
  return neg64(HI[0]!, qlo);
}

/** Signed modulo, the result taking the dividend's sign; x % 0 = x, as the kernel. */
export function smod64(ahi: number, alo: number, bhi: number, blo: number): number {
  if ((bhi | blo) === 0) { HI[0] = ahi; return alo; }
  let xlo = alo, xhi = ahi, ylo = blo, yhi = bhi;
  if (ahi < 0) { xlo = neg64(ahi, alo); xhi = HI[0]!; }
  if (bhi < 0) { ylo = neg64(bhi, blo); yhi = HI[0]!; }
  udivmod64(xhi, xlo, yhi, ylo);
  if (ahi < 0) return neg64(REM[0]!, REM[1]!);
  HI[0] = REM[0]!;
  return REM[1]!;
}

// 32-bit forms: operands and results are int32 low halves (the caller zero-extends).

export function udiv32(a: number, b: number): number {
  return b === 0 ? 0 : Math.floor((a >>> 0) / (b >>> 0)) | 0;
}
/** x % 0 = x (zero-extended by the caller, as the kernel does for 32-bit modulo). */
export function umod32(a: number, b: number): number {
  return b === 0 ? a : ((a >>> 0) % (b >>> 0)) | 0;
}
export function sdiv32(a: number, b: number): number {
  return b === 0 ? 0 : Math.trunc((a | 0) / (b | 0)) | 0;
}
export function smod32(a: number, b: number): number {
  return b === 0 ? a : ((a | 0) % (b | 0)) | 0;
}

export function bswap16(v: number): number {
  return ((v & 0xff) << 8) | ((v >>> 8) & 0xff);
}
export function bswap32(v: number): number {
  return ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24);
}

/** A 64-bit value as an unsigned BigInt, for tests and messages only. */
export function toBigUint(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** Splits a non-negative safe integer into halves (HI[0] gets the high half). */
export function fromNumber(v: number): number {
  const hi = Math.floor(v / TWO32);
  HI[0] = hi | 0;
  // v - hi * 2^32 rather than v % 2^32: the same low half for every safe integer, and a double
  // remainder is a library call (replay converts the clock of every packet).
  return (v - hi * TWO32) | 0;
}
