/**
 * Timestamps in capture files are counts of units (µs, ns, or any pcapng if_tsresol) since the
 * epoch; packets carry them as whole seconds plus nanoseconds, both plain numbers. A 64-bit
 * count of nanoseconds does not fit a double exactly, so the common resolutions (10^-n, n ≤ 9)
 * are split with exact integer arithmetic on doubles, and only the rare ones (binary
 * fractions, finer than 1 ns) fall back to BigInt.
 */

const TWO32 = 4294967296;
const TWO16 = 65536;
const MAX_SAFE_HIGH = 0x200000; // high word below this: high * 2^32 + low < 2^53

/** How to turn one interface's timestamp units into seconds + nanoseconds and back. */
export interface TimestampResolution {
  /** The raw if_tsresol value: bit 7 clear = 10^-n seconds, set = 2^-n seconds. */
  readonly tsresol: number;
  /** Units per second when the resolution is 10^-n with n ≤ 9 (the fast path), else 0. */
  readonly unitsPerSecond: number;
  /** Nanoseconds per unit for the fast path. */
  readonly nsPerUnit: number;
  /** Seconds added to every timestamp (pcapng if_tsoffset). */
  readonly offsetSec: number;
}

export function timestampResolution(tsresol: number, offsetSec = 0): TimestampResolution {
  const decimal = (tsresol & 0x80) === 0;
  const n = tsresol & 0x7f;
  if (decimal && n <= 9) {
    return { tsresol, unitsPerSecond: 10 ** n, nsPerUnit: 10 ** (9 - n), offsetSec };
  }
  return { tsresol, unitsPerSecond: 0, nsPerUnit: 0, offsetSec };
}

export const MICROSECONDS = timestampResolution(6);
export const NANOSECONDS = timestampResolution(9);

/** Something that receives a timestamp; the packet object itself, so nothing is allocated. */
export interface TimestampTarget {
  tsSec: number;
  tsNsec: number;
}

/** Sets target.tsSec/tsNsec from a 64-bit unit count given as its high and low 32-bit words. */
export function setTimestampFromUnits(target: TimestampTarget, high: number, low: number, res: TimestampResolution): void {
  const d = res.unitsPerSecond;
  if (d !== 0) {
    let sec: number;
    let rem: number;
    if (high < MAX_SAFE_HIGH) {
      const units = high * TWO32 + low;
      sec = Math.floor(units / d);
      rem = units - sec * d;
      // The division is rounded; both fix-ups keep the split exact.
      if (rem < 0) { sec -= 1; rem += d; } else if (rem >= d) { sec += 1; rem -= d; }
    } else {
      // Long division in 16-bit digits: every intermediate stays below 2^47.
      const qa = Math.floor(high / d);
      let r = high - qa * d;
      let x = r * TWO16 + (low >>> 16);
      const qb = Math.floor(x / d);
      r = x - qb * d;
      x = r * TWO16 + (low & 0xffff);
      const qc = Math.floor(x / d);
      rem = x - qc * d;
      sec = qa * TWO32 + qb * TWO16 + qc;
    }
    target.tsSec = sec + res.offsetSec;
    target.tsNsec = rem * res.nsPerUnit;
    return;
  }
  const units = (BigInt(high) << 32n) | BigInt(low);
  const n = BigInt(res.tsresol & 0x7f);
  let sec: bigint;
  let nsec: bigint;
  if ((res.tsresol & 0x80) !== 0) {
    sec = units >> n;
    nsec = ((units & ((1n << n) - 1n)) * 1_000_000_000n) >> n;
  } else {
    const per = 10n ** n;
    sec = units / per;
    nsec = (units % per) / 10n ** (n - 9n);
  }
  target.tsSec = Number(sec) + res.offsetSec;
  target.tsNsec = Number(nsec);
}

/** Receives the high and low 32-bit words of a unit count. */
export interface UnitsTarget {
  high: number;
  low: number;
}

/**
 * The 64-bit unit count for (sec, nsec) in resolution `res`, ignoring res.offsetSec (writers
 * store absolute times). Sub-unit nanoseconds are truncated, as tcpdump does.
 */
export function unitsFromTimestamp(out: UnitsTarget, sec: number, nsec: number, res: TimestampResolution): void {
  const d = res.unitsPerSecond;
  if (d !== 0) {
    const frac = Math.floor(nsec / res.nsPerUnit);
    // sec * d + frac, split so that every product stays exact: sec = sh * 2^16 + sl.
    const sh = Math.floor(sec / TWO16);
    const sl = sec - sh * TWO16;
    const pHigh = sh * d; // times 2^16
    const pLow = sl * d + frac;
    const pHighLo = pHigh % TWO16;
    const t = pHighLo * TWO16 + pLow;
    const tHigh = Math.floor(t / TWO32);
    out.low = t - tHigh * TWO32;
    out.high = (pHigh - pHighLo) / TWO16 + tHigh;
    return;
  }
  const n = BigInt(res.tsresol & 0x7f);
  let units: bigint;
  if ((res.tsresol & 0x80) !== 0) {
    units = (BigInt(sec) << n) + ((BigInt(nsec) << n) / 1_000_000_000n);
  } else {
    units = BigInt(sec) * 10n ** n + BigInt(nsec) * 10n ** (n - 9n);
  }
  if (units >= 1n << 64n) throw new RangeError(`timestamp ${sec} s does not fit 64 bits of ${describeResolution(res.tsresol)}`);
  out.high = Number((units >> 32n) & 0xffffffffn);
  out.low = Number(units & 0xffffffffn);
}

/** "1 ns", "1 µs", "2^-30 s", "10^-12 s" … */
export function describeResolution(tsresol: number): string {
  const n = tsresol & 0x7f;
  if ((tsresol & 0x80) !== 0) return `2^-${n} s units`;
  return ({ 0: 's', 3: 'ms', 6: 'µs', 9: 'ns' } as Record<number, string>)[n] ?? `10^-${n} s units`;
}
