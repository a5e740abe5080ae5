/**
 * A million packets go through with flat memory: the readers keep one buffer and one packet
 * object whatever the file size. No timing is asserted (see bench/pcap-read.ts for speed).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createPcapWriter, forEachPacket, openCapture } from '../../src/pcap/index.js';
import { pcapGlobalHeader } from '../helpers/pcap.js';

const PACKETS = 1_000_000;
const FRAME = 60;
/** Generous: the young generation alone can swing by 16 MB; retaining the packets would cost > 100 MB. */
const GROWTH_LIMIT = 48 * 1024 * 1024;

function memory(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** A pcap stream of PACKETS records generated on the fly, 64 KiB at a time (it is never on disk). */
function syntheticPcapStream(): Readable {
  function* chunks(): Generator<Buffer> {
    yield pcapGlobalHeader(65535);
    const perChunk = 800;
    for (let i = 0; i < PACKETS; i += perChunk) {
      const n = Math.min(perChunk, PACKETS - i);
      const chunk = Buffer.alloc(n * (16 + FRAME));
      for (let k = 0; k < n; k++) {
        const o = k * (16 + FRAME);
        const index = i + k;
        chunk.writeUInt32LE(1_700_000_000 + Math.floor(index / 1000), o);
        chunk.writeUInt32LE((index % 1000) * 1000, o + 4);
        chunk.writeUInt32LE(FRAME, o + 8);
        chunk.writeUInt32LE(FRAME, o + 12);
        chunk.writeUInt32LE(index, o + 16); // the frame starts with its own number
      }
      yield chunk;
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}

test('1,000,000 packets from a stream: every one read, memory flat', { timeout: 120_000 }, async () => {
  const reader = await openCapture(syntheticPcapStream(), { name: 'synthetic' });
  const baseline = memory();
  let peak = baseline;
  let expected = 0;
  let wrong = 0;
  for await (const p of reader) {
    if (p.bytes[p.offset]! + p.bytes[p.offset + 1]! * 256 + p.bytes[p.offset + 2]! * 65536 !== expected) wrong += 1;
    if (p.tsNsec !== (expected % 1000) * 1_000_000) wrong += 1;
    expected += 1;
    if ((expected & 0xffff) === 0) peak = Math.max(peak, memory());
  }
  assert.equal(expected, PACKETS);
  assert.equal(wrong, 0);
  assert.ok(peak - baseline < GROWTH_LIMIT, `memory grew by ${((peak - baseline) / 1048576).toFixed(1)} MB`);
});

test('1,000,000 packets written to a file and read back (sync and async): memory flat', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nm-pcap-mem-'));
  try {
    const path = join(dir, 'big.pcap');
    const frame = new Uint8Array(FRAME);
    const before = memory();
    let peak = before;
    const writer = createPcapWriter(path, { nanosecond: true });
    for (let i = 0; i < PACKETS; i++) {
      frame[0] = i & 0xff;
      frame[1] = (i >> 8) & 0xff;
      frame[2] = (i >> 16) & 0xff;
      writer.writeBytes(frame, 0, FRAME, 1_700_000_000 + Math.floor(i / 1000), i, FRAME);
      if ((i & 0xffff) === 0) peak = Math.max(peak, memory());
    }
    await writer.close();
    assert.ok(peak - before < GROWTH_LIMIT, `writing grew memory by ${((peak - before) / 1048576).toFixed(1)} MB`);
    assert.equal(statSync(path).size, 24 + PACKETS * (16 + FRAME));

    for (const mode of ['sync', 'async'] as const) {
      const start = memory();
      let top = start;
      let n = 0;
      let wrong = 0;
      const check = (p: { bytes: Uint8Array; offset: number; tsNsec: number }): void => {
        if (p.bytes[p.offset]! + p.bytes[p.offset + 1]! * 256 + p.bytes[p.offset + 2]! * 65536 !== n || p.tsNsec !== n) wrong += 1;
        n += 1;
        if ((n & 0xffff) === 0) top = Math.max(top, memory());
      };
      if (mode === 'sync') forEachPacket(path, check);
      else await (await openCapture(path)).forEach(check);
      assert.equal(n, PACKETS, mode);
      assert.equal(wrong, 0, mode);
      assert.ok(top - start < GROWTH_LIMIT, `${mode} reading grew memory by ${((top - start) / 1048576).toFixed(1)} MB`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
