/** Writers: what they write reads back equal, byte for byte where the tools' files allow it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import {
  createPcapWriter, createPcapngWriter, openCapture, openCaptureSync, readAllPackets, CaptureError,
  type CaptureWriter,
} from '../../src/pcap/index.js';
import { asExpected, expectedPackets, fixture, syntheticFrame } from './helpers.js';

function tempDir(): { dir: string; [Symbol.dispose](): void } {
  const dir = mkdtempSync(join(tmpdir(), 'nm-pcap-'));
  return { dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

for (const name of ['tcpdump-us.pcap', 'tcpdump-us-be.pcap', 'tcpdump-ns.pcap', 'editcap-nsec-be.pcap', 'tcpdump-snap96.pcap', 'tcpdump-sll2.pcap']) {
  test(`${name}: read and written again with the same settings is byte-identical`, async () => {
    using tmp = tempDir();
    const out = join(tmp.dir, 'out.pcap');
    const reader = await openCapture(fixture(name));
    const iface = reader.interfaces[0]!;
    const writer = createPcapWriter(out, {
      linkType: iface.linkType, snaplen: iface.snaplen, nanosecond: reader.nanosecond, bigEndian: reader.byteOrder === 'big',
    });
    await reader.forEach((p) => { writer.write(p); });
    await writer.close();
    assert.equal(writer.packetCount, reader.packetCount);
    assert.deepEqual(readFileSync(out), readFileSync(fixture(name)));
  });
}

test('pcapng fixture rewritten with its interfaces and comments reads back equal, in both byte orders', async () => {
  const want = expectedPackets('dumpcap-multi-comments.pcapng');
  for (const bigEndian of [false, true]) {
    using tmp = tempDir();
    const out = join(tmp.dir, 'out.pcapng');
    const reader = openCaptureSync(fixture('dumpcap-multi-comments.pcapng'));
    const writer = createPcapngWriter(out, { interfaces: reader.interfaces, comments: reader.sectionComments, bigEndian });
    reader.forEach((p) => { writer.write(p); });
    await writer.close();
    const back = await readAllPackets(out);
    assert.equal(back.info.byteOrder, bigEndian ? 'big' : 'little');
    assert.deepEqual(back.packets.map(asExpected), want);
    assert.deepEqual(back.info.sectionComments, ['made by make-pcap-fixtures.sh']);
    assert.deepEqual(back.info.interfaces.map((i) => [i.name, i.description, i.linkType, i.tsresol]),
      [['va0', undefined, 1, 9], ['lo', 'Loopback', 1, 9]]);
  }
});

test('pcap → pcapng → pcap keeps packets and microsecond timestamps', async () => {
  using tmp = tempDir();
  const mid = join(tmp.dir, 'mid.pcapng');
  const end = join(tmp.dir, 'end.pcap');
  const r1 = await openCapture(fixture('tcpdump-us.pcap'));
  const w1 = createPcapngWriter(mid, { interfaces: r1.interfaces });
  await r1.forEach((p) => { w1.write(p); });
  await w1.close();
  const r2 = await openCapture(mid);
  const w2 = createPcapWriter(end, { linkType: r2.linkType, snaplen: 262144 });
  for await (const p of r2) w2.write(p);
  await w2.close();
  assert.deepEqual(readFileSync(end), readFileSync(fixture('tcpdump-us.pcap')));
});

interface SynthPacket {
  data: Uint8Array;
  tsSec: number;
  tsNsec: number;
  origLen: number;
  interfaceId: number;
  comment: string | undefined;
}

const packetArb = (interfaces: number, withComments: boolean): fc.Arbitrary<SynthPacket> => fc.record({
  data: fc.uint8Array({ minLength: 0, maxLength: 300 }),
  tsSec: fc.oneof(fc.integer({ min: 0, max: 0xffffffff }), fc.constant(1_795_612_794)),
  tsNsec: fc.integer({ min: 0, max: 999_999_999 }),
  extra: fc.nat(2000),
  interfaceId: fc.nat(interfaces - 1),
  comment: withComments ? fc.option(fc.string({ maxLength: 40 }), { nil: undefined }) : fc.constant(undefined),
}).map((r) => ({ data: r.data, tsSec: r.tsSec, tsNsec: r.tsNsec, origLen: r.data.length + r.extra, interfaceId: r.interfaceId, comment: r.comment }));

async function writeAll(writer: CaptureWriter, packets: SynthPacket[]): Promise<void> {
  for (const p of packets) writer.write(p);
  await writer.close();
}

test('property: pcap round trip, µs and ns, both byte orders, any chunk size', async () => {
  await fc.assert(fc.asyncProperty(
    fc.array(packetArb(1, false), { maxLength: 40 }), fc.boolean(), fc.boolean(), fc.integer({ min: 1, max: 4096 }),
    async (packets, nanosecond, bigEndian, chunkSize) => {
      using tmp = tempDir();
      const path = join(tmp.dir, 'p.pcap');
      await writeAll(createPcapWriter(path, { nanosecond, bigEndian, linkType: 1 }), packets);
      const back = await readAllPackets(path, { chunkSize });
      assert.equal(back.info.nanosecond, nanosecond);
      assert.equal(back.info.byteOrder, bigEndian ? 'big' : 'little');
      assert.deepEqual(back.packets.map((p) => [Buffer.from(p.data), p.tsSec, p.tsNsec, p.origLen]),
        packets.map((p) => [Buffer.from(p.data), p.tsSec, nanosecond ? p.tsNsec : p.tsNsec - (p.tsNsec % 1000), p.origLen]));
    }), { numRuns: 60 });
});

test('property: pcapng round trip with several interfaces, resolutions, comments, both byte orders', async () => {
  const ifaceArb = fc.record({
    linkType: fc.constantFrom(1, 113, 276, 101),
    tsresol: fc.constantFrom(0, 3, 6, 9, 0x80 | 10, 0x80 | 30, 12),
    name: fc.option(fc.string({ maxLength: 10 }), { nil: undefined }),
  });
  await fc.assert(fc.asyncProperty(
    fc.array(ifaceArb, { minLength: 1, maxLength: 4 }).chain((ifs) => fc.tuple(fc.constant(ifs), fc.array(packetArb(ifs.length, true), { maxLength: 30 }))),
    fc.array(fc.string({ maxLength: 20 }), { maxLength: 2 }), fc.boolean(), fc.integer({ min: 1, max: 2048 }),
    async ([interfaces, generated], comments, bigEndian, chunkSize) => {
      // 64 bits of picoseconds end in 2554; keep those interfaces' times below that.
      const packets = generated.map((p) => interfaces[p.interfaceId]!.tsresol === 12 ? { ...p, tsSec: p.tsSec % 18_000_000 } : p);
      using tmp = tempDir();
      const path = join(tmp.dir, 'p.pcapng');
      await writeAll(createPcapngWriter(path, { interfaces, comments, bigEndian }), packets);
      const back = await readAllPackets(path, { chunkSize });
      assert.deepEqual(back.info.sectionComments, comments);
      assert.deepEqual(back.info.interfaces.map((i) => [i.linkType, i.tsresol, i.name]), interfaces.map((i) => [i.linkType, i.tsresol, i.name]));
      // The expected timestamp is the input truncated to the interface's resolution.
      const truncate = (tsNsec: number, tsresol: number): number => {
        const n = tsresol & 0x7f;
        if ((tsresol & 0x80) === 0) return n >= 9 ? tsNsec : tsNsec - (tsNsec % 10 ** (9 - n));
        const units = (BigInt(tsNsec) << BigInt(n)) / 1_000_000_000n;
        return Number((units * 1_000_000_000n) >> BigInt(n));
      };
      assert.deepEqual(
        back.packets.map((p) => [Buffer.from(p.data), p.tsSec, p.tsNsec, p.origLen, p.interfaceId, p.linkType, p.comment]),
        packets.map((p) => [Buffer.from(p.data), p.tsSec, truncate(p.tsNsec, interfaces[p.interfaceId]!.tsresol), p.origLen,
          p.interfaceId, interfaces[p.interfaceId]!.linkType, p.comment]));
    }), { numRuns: 60 });
});

test('the writers cut packets to the snap length and keep the wire length', async () => {
  using tmp = tempDir();
  const a = join(tmp.dir, 'a.pcap');
  const b = join(tmp.dir, 'b.pcapng');
  const frame = syntheticFrame(1, 200);
  const w1 = createPcapWriter(a, { snaplen: 64 });
  w1.write({ data: frame, tsSec: 5, tsNsec: 6000 });
  await w1.close();
  const w2 = createPcapngWriter(b, { interfaces: [{ linkType: 1, snaplen: 64 }] });
  w2.write({ data: frame, tsSec: 5, tsNsec: 6000 });
  await w2.close();
  for (const path of [a, b]) {
    const { packets } = await readAllPackets(path);
    assert.equal(packets.length, 1);
    assert.equal(packets[0]!.caplen, 64);
    assert.equal(packets[0]!.origLen, 200);
    assert.deepEqual(Buffer.from(packets[0]!.data), Buffer.from(frame.subarray(0, 64)));
  }
});

test('writing to a Writable stream produces the same bytes as writing to a file', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'f.pcapng');
  const packets = Array.from({ length: 30000 }, (_, i) => ({ data: syntheticFrame(i, 60 + (i % 40)), tsSec: 1000 + i, tsNsec: i * 1000, comment: i % 1000 === 0 ? `p${i}` : undefined }));
  const toFile = createPcapngWriter(path, { nanosecond: true });
  for (const p of packets) toFile.write(p);
  await toFile.close();
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  const toStream = createPcapngWriter(stream, { nanosecond: true });
  for (const p of packets) {
    if (!toStream.write(p)) await toStream.drained();
  }
  await toStream.close();
  assert.deepEqual(Buffer.concat(chunks), readFileSync(path));
  assert.ok(chunks.length > 1, 'more than one chunk was handed to the stream');
});

test('writer misuse gives CaptureErrors: unknown interface, write after close, bad timestamp, unwritable path', async () => {
  using tmp = tempDir();
  const w = createPcapngWriter(join(tmp.dir, 'x.pcapng'), { interfaces: [{ linkType: 1 }] });
  assert.throws(() => w.write({ data: new Uint8Array(20), tsSec: 0, tsNsec: 0, interfaceId: 1 }),
    (e: unknown) => e instanceof CaptureError && /interface 1 but the writer has 1/.test(e.message));
  assert.throws(() => w.write({ data: new Uint8Array(20), tsSec: -1, tsNsec: 0 }), /timestamp -1 s/);
  await w.close();
  await w.close(); // idempotent
  assert.throws(() => w.write({ data: new Uint8Array(20), tsSec: 0, tsNsec: 0 }), /write after close/);
  assert.throws(() => createPcapWriter(join(tmp.dir, 'no', 'such', 'dir.pcap')),
    (e: unknown) => e instanceof CaptureError && /cannot create: no such file or directory/.test(e.message) && e.exitCode === 2);
});

const tshark = spawnSync('tshark', ['--version'], { encoding: 'utf8' }).status === 0;

test('tshark reads what the pcapng writer wrote (interfaces, ns timestamps, comments, big-endian)', { skip: tshark ? false : 'tshark is not installed' }, async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'w.pcapng');
  const w = createPcapngWriter(path, {
    interfaces: [{ linkType: 1, name: 'one', tsresol: 9 }, { linkType: 1, name: 'two', tsresol: 6 }],
    comments: ['section note'], bigEndian: true,
  });
  const sent = [
    { data: syntheticFrame(1, 60), tsSec: 1_795_612_794, tsNsec: 123_456_789, interfaceId: 0, comment: 'hello' },
    { data: syntheticFrame(2, 61), tsSec: 1_795_612_795, tsNsec: 5_000, interfaceId: 1, origLen: 1500 },
    { data: syntheticFrame(3, 99), tsSec: 4_000_000_000, tsNsec: 999_999_999, interfaceId: 0 },
  ];
  for (const p of sent) w.write(p);
  await w.close();
  const r = spawnSync('tshark', ['-r', path, '-T', 'json', '-x', '-j', 'frame pkt_comment'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const layers = (JSON.parse(r.stdout) as Array<{ _source: { layers: Record<string, any> } }>).map((x) => x._source.layers);
  assert.deepEqual(layers.map((l) => [l.frame['frame.time_epoch'], l.frame['frame.interface_id'], l.frame['frame.len'], l.frame_raw[0], l.pkt_comment?.['frame.comment']]), [
    ['1795612794.123456789', '0', '60', Buffer.from(sent[0]!.data).toString('hex'), 'hello'],
    ['1795612795.000005000', '1', '1500', Buffer.from(sent[1]!.data).toString('hex'), undefined],
    ['4000000000.999999999', '0', '99', Buffer.from(sent[2]!.data).toString('hex'), undefined],
  ]);
});
