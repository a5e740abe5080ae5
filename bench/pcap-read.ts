/**
 * Capture reading and writing speed, in packets per second.
 *   node dist/bench/pcap-read.js [packets] [pcap|pcapng]
 * Makes a synthetic capture (frames of 54 to 128 bytes, like a snap-length-128 capture of
 * mixed traffic) in a temporary directory, then times the read paths and a read+write pass
 * (what replay does around the VM). Not run by the tests.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createPcapWriter, createPcapngWriter, forEachPacket, openCapture, openCaptureSync, type CaptureWriter,
} from '../src/pcap/index.js';

const packets = Number(process.argv[2] ?? 1_000_000);
const format = process.argv[3] === 'pcapng' ? 'pcapng' : 'pcap';
const dir = mkdtempSync(join(tmpdir(), 'nm-bench-pcap-'));

function makeWriter(path: string): CaptureWriter {
  return format === 'pcap' ? createPcapWriter(path, { snaplen: 128 }) : createPcapngWriter(path, { interfaces: [{ linkType: 1, snaplen: 128 }] });
}

async function time(label: string, run: () => number | Promise<number>): Promise<void> {
  const t0 = process.hrtime.bigint();
  const n = await run();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`${label.padEnd(36)} ${(n / s / 1e6).toFixed(2).padStart(6)} M packets/s  (${n} in ${s.toFixed(3)} s)`);
}

try {
  const input = join(dir, `in.${format}`);
  const output = join(dir, `out.${format}`);
  const frame = new Uint8Array(128);
  for (let i = 0; i < frame.length; i++) frame[i] = i;
  const w = makeWriter(input);
  for (let i = 0; i < packets; i++) w.writeBytes(frame, 0, 54 + (i % 75), 1_700_000_000 + (i >>> 12), (i * 977) % 1e9, 54 + (i % 1400));
  await w.close();
  console.log(`${format}: ${packets} packets, ${(statSync(input).size / 1048576).toFixed(1)} MiB`);

  let sink = 0;
  for (let round = 0; round < 2; round++) {
    await time('sync forEachPacket', () => forEachPacket(input, (p) => { sink += p.bytes[p.offset + 13]!; }).packets);
    await time('sync for...of', () => {
      let n = 0;
      for (const p of openCaptureSync(input)) { sink += p.bytes[p.offset + 13]!; n++; }
      return n;
    });
    await time('async reader.forEach', async () => (await openCapture(input)).forEach((p) => { sink += p.bytes[p.offset + 13]!; }));
    await time('async for await', async () => {
      let n = 0;
      for await (const p of await openCapture(input)) { sink += p.bytes[p.offset + 13]!; n++; }
      return n;
    });
    await time('sync forEachPacket + p.data view', () => forEachPacket(input, (p) => { sink += p.data[13]!; }).packets);
    await time('sync read + write (replay shape)', async () => {
      const out = makeWriter(output);
      const n = forEachPacket(input, (p) => { out.write(p); }).packets;
      await out.close();
      return n;
    });
  }
  if (sink === -1) console.log(sink);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
