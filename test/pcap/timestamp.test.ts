/** Timestamp unit conversions are exact against a BigInt reference, in both directions. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { setTimestampFromUnits, timestampResolution, unitsFromTimestamp } from '../../src/pcap/timestamp.js';

function reference(high: number, low: number, tsresol: number): [number, number] {
  const units = (BigInt(high) << 32n) | BigInt(low);
  const n = BigInt(tsresol & 0x7f);
  if (tsresol & 0x80) return [Number(units >> n), Number(((units & ((1n << n) - 1n)) * 1_000_000_000n) >> n)];
  const per = 10n ** n;
  const frac = units % per;
  return [Number(units / per), Number(n <= 9n ? frac * 10n ** (9n - n) : frac / 10n ** (n - 9n))];
}

const resolArb = fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0x80, max: 0x80 + 40 }));

test('property: units → seconds + nanoseconds matches BigInt, for every 64-bit count and resolution', () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }), resolArb, (high, low, tsresol) => {
    const t = { tsSec: -1, tsNsec: -1 };
    setTimestampFromUnits(t, high, low, timestampResolution(tsresol));
    assert.deepEqual([t.tsSec, t.tsNsec], reference(high, low, tsresol));
  }), { numRuns: 5000 });
});

test('nanosecond counts near today and near the 64-bit end are split exactly', () => {
  const cases: Array<[bigint, number, number]> = [
    [1_795_612_794_123_456_789n, 1_795_612_794, 123_456_789],
    [1_795_612_794_999_999_999n, 1_795_612_794, 999_999_999],
    [1_795_612_795_000_000_000n, 1_795_612_795, 0],
    [0xffffffffffffffffn, 18_446_744_073, 709_551_615],
  ];
  for (const [units, sec, nsec] of cases) {
    const t = { tsSec: 0, tsNsec: 0 };
    setTimestampFromUnits(t, Number(units >> 32n), Number(units & 0xffffffffn), timestampResolution(9));
    assert.deepEqual([t.tsSec, t.tsNsec], [sec, nsec]);
  }
});

test('property: seconds + nanoseconds → units → back loses only what the resolution cannot hold', () => {
  fc.assert(fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 999_999_999 }), fc.oneof(fc.integer({ min: 0, max: 9 }), fc.constantFrom(0x80 | 20, 0x80 | 30)),
    (sec, nsec, tsresol) => {
      const res = timestampResolution(tsresol);
      const u = { high: 0, low: 0 };
      unitsFromTimestamp(u, sec, nsec, res);
      const total = (BigInt(u.high) << 32n) | BigInt(u.low);
      const n = BigInt(tsresol & 0x7f);
      const want = tsresol & 0x80
        ? (BigInt(sec) << n) + ((BigInt(nsec) << n) / 1_000_000_000n)
        : BigInt(sec) * 10n ** n + BigInt(nsec) / 10n ** (9n - n);
      assert.equal(total, want);
      const t = { tsSec: 0, tsNsec: 0 };
      setTimestampFromUnits(t, u.high, u.low, res);
      assert.equal(t.tsSec, sec);
      assert.ok(t.tsNsec <= nsec);
    }), { numRuns: 5000 });
});

test('if_tsoffset seconds are added', () => {
  const t = { tsSec: 0, tsNsec: 0 };
  setTimestampFromUnits(t, 0, 2_500_000, timestampResolution(6, 1_000_000));
  assert.deepEqual(t, { tsSec: 1_000_002, tsNsec: 500_000_000 });
});
