/**
 * Files written by tcpdump, dumpcap, tshark and editcap (test/fixtures/pcap, made by
 * scripts/fixtures/make-pcap-fixtures.sh) read back exactly as tshark reads them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, readFileSync } from 'node:fs';
import {
  openCapture, openCaptureSync, readAllPackets, summarizeCapture, formatCaptureSummary,
  type CaptureInfo, type CapturePacket,
} from '../../src/pcap/index.js';
import { asExpected, expectedPackets, fixture, type ExpectedPacket } from './helpers.js';

interface Case {
  file: string;
  /** The fixture whose expected list applies (big-endian copies use their original's). */
  expected: string;
  format: 'pcap' | 'pcapng';
  byteOrder: 'little' | 'big';
  nanosecond: boolean;
  linkType: number;
}

const cases: Case[] = [
  { file: 'tcpdump-us.pcap', expected: 'tcpdump-us.pcap', format: 'pcap', byteOrder: 'little', nanosecond: false, linkType: 1 },
  { file: 'tcpdump-us-be.pcap', expected: 'tcpdump-us.pcap', format: 'pcap', byteOrder: 'big', nanosecond: false, linkType: 1 },
  { file: 'tcpdump-ns.pcap', expected: 'tcpdump-ns.pcap', format: 'pcap', byteOrder: 'little', nanosecond: true, linkType: 1 },
  { file: 'tcpdump-snap96.pcap', expected: 'tcpdump-snap96.pcap', format: 'pcap', byteOrder: 'little', nanosecond: false, linkType: 1 },
  { file: 'tcpdump-sll.pcap', expected: 'tcpdump-sll.pcap', format: 'pcap', byteOrder: 'little', nanosecond: false, linkType: 113 },
  { file: 'tcpdump-sll2.pcap', expected: 'tcpdump-sll2.pcap', format: 'pcap', byteOrder: 'little', nanosecond: false, linkType: 276 },
  { file: 'editcap-nsec.pcap', expected: 'editcap-nsec.pcap', format: 'pcap', byteOrder: 'little', nanosecond: true, linkType: 1 },
  { file: 'editcap-nsec-be.pcap', expected: 'editcap-nsec.pcap', format: 'pcap', byteOrder: 'big', nanosecond: true, linkType: 1 },
  { file: 'tshark-us.pcapng', expected: 'tshark-us.pcapng', format: 'pcapng', byteOrder: 'little', nanosecond: false, linkType: 1 },
  { file: 'editcap-ns.pcapng', expected: 'editcap-ns.pcapng', format: 'pcapng', byteOrder: 'little', nanosecond: true, linkType: 1 },
  { file: 'dumpcap-multi-comments.pcapng', expected: 'dumpcap-multi-comments.pcapng', format: 'pcapng', byteOrder: 'little', nanosecond: true, linkType: 1 },
  { file: 'dumpcap-multi-comments-be.pcapng', expected: 'dumpcap-multi-comments.pcapng', format: 'pcapng', byteOrder: 'big', nanosecond: true, linkType: 1 },
];

function checkInfo(info: CaptureInfo, c: Case): void {
  assert.equal(info.format, c.format);
  assert.equal(info.byteOrder, c.byteOrder);
  assert.equal(info.nanosecond, c.nanosecond);
  assert.equal(info.linkType, c.linkType);
}

for (const c of cases) {
  test(`${c.file}: the async reader gives the packets tshark reads`, async () => {
    const want = expectedPackets(c.expected);
    assert.ok(want.length >= 10, 'fixture has packets');
    const reader = await openCapture(fixture(c.file));
    checkInfo(reader, c);
    const got: ExpectedPacket[] = [];
    for await (const p of reader) got.push(asExpected(p));
    assert.deepEqual(got, want);
    assert.equal(reader.packetCount, want.length);
  });

  test(`${c.file}: the sync reader, with 7-byte reads, gives the same packets`, () => {
    // 7 bytes per read puts record boundaries everywhere in the buffer and forces it to grow.
    const reader = openCaptureSync(fixture(c.file), { chunkSize: 7 });
    checkInfo(reader, c);
    const got: ExpectedPacket[] = [];
    for (const p of reader) got.push(asExpected(p));
    assert.deepEqual(got, expectedPackets(c.expected));
  });
}

test('a pcap read from a Readable stream in odd-sized chunks gives the same packets', async () => {
  const stream = createReadStream(fixture('tcpdump-ns.pcap'), { highWaterMark: 5 });
  const reader = await openCapture(stream, { chunkSize: 100 });
  assert.equal(reader.name, 'stream');
  const got: ExpectedPacket[] = [];
  await reader.forEach((p) => { got.push(asExpected(p)); });
  assert.deepEqual(got, expectedPackets('tcpdump-ns.pcap'));
});

test('tcpdump pcap and its tshark pcapng conversion hold the same packets and timestamps', async () => {
  const strip = (ps: CapturePacket[]): unknown[] => ps.map((p) => ({ ...asExpected(p), linkType: p.linkType }));
  const a = await readAllPackets(fixture('tcpdump-us.pcap'));
  const b = await readAllPackets(fixture('tshark-us.pcapng'));
  assert.deepEqual(strip(b.packets), strip(a.packets));
  const ns = await readAllPackets(fixture('tcpdump-ns.pcap'));
  const nsng = await readAllPackets(fixture('editcap-ns.pcapng'));
  assert.deepEqual(strip(nsng.packets), strip(ns.packets));
  assert.ok(ns.packets.some((p) => p.tsNsec % 1000 !== 0), 'the nanosecond capture has sub-microsecond digits');
});

test('dumpcap pcapng: two interfaces with their names, packet comments, the section comment', async () => {
  for (const file of ['dumpcap-multi-comments.pcapng', 'dumpcap-multi-comments-be.pcapng']) {
    const { info, packets } = await readAllPackets(fixture(file));
    assert.equal(info.interfaces.length, 2);
    assert.deepEqual(info.interfaces.map((i) => [i.name, i.linkType, i.tsresol, i.section]), [['va0', 1, 9, 0], ['lo', 1, 9, 0]]);
    assert.equal(info.interfaces[1]!.description, 'Loopback');
    assert.deepEqual(info.sectionComments, ['made by make-pcap-fixtures.sh']);
    assert.equal(packets[0]!.comment, 'first packet, a comment');
    assert.equal(packets[2]!.comment, 'second comment, not ASCII: héllo wörld');
    assert.equal(packets.filter((p) => p.comment !== undefined).length, 2);
    assert.ok(packets.some((p) => p.interfaceId === 1) && packets.some((p) => p.interfaceId === 0));
  }
});

test('a snap length of 96 gives caplen 96 and the real wire length', async () => {
  const { info, packets } = await readAllPackets(fixture('tcpdump-snap96.pcap'));
  assert.equal(info.interfaces[0]!.snaplen, 96);
  const cut = packets.filter((p) => p.origLen > p.caplen);
  assert.ok(cut.length > 0);
  for (const p of cut) assert.equal(p.caplen, 96);
});

test('packet fileOffset points at the record in the file', async () => {
  const bytes = readFileSync(fixture('tcpdump-us.pcap'));
  const { packets } = await readAllPackets(fixture('tcpdump-us.pcap'));
  assert.equal(packets[0]!.fileOffset, 24);
  for (const p of packets) {
    assert.equal(bytes.readUInt32LE(p.fileOffset + 8), p.caplen);
    assert.deepEqual(bytes.subarray(p.fileOffset + 16, p.fileOffset + 16 + p.caplen), Buffer.from(p.data));
  }
  assert.deepEqual(packets.map((p) => p.index), packets.map((_, i) => i));
});

test('summarizeCapture counts packets and bytes and finds the first and last timestamps', async () => {
  const want = expectedPackets('dumpcap-multi-comments.pcapng');
  const s = await summarizeCapture(fixture('dumpcap-multi-comments-be.pcapng'));
  assert.equal(s.format, 'pcapng');
  assert.equal(s.packets, want.length);
  assert.deepEqual(s.linkTypes, [1]);
  assert.equal(s.capturedBytes, want.reduce((n, p) => n + p.caplen, 0));
  assert.equal(s.wireBytes, want.reduce((n, p) => n + p.origLen, 0));
  assert.deepEqual(s.first, { sec: want[0]!.tsSec, nsec: want[0]!.tsNsec });
  assert.deepEqual(s.last, { sec: want.at(-1)!.tsSec, nsec: want.at(-1)!.tsNsec });
  const sorted = [...want].sort((a, b) => a.tsSec - b.tsSec || a.tsNsec - b.tsNsec);
  assert.deepEqual(s.earliest, { sec: sorted[0]!.tsSec, nsec: sorted[0]!.tsNsec });
  assert.deepEqual(s.latest, { sec: sorted.at(-1)!.tsSec, nsec: sorted.at(-1)!.tsNsec });
  assert.equal(s.packetComments, 2);
  const text = formatCaptureSummary(s);
  assert.match(text, new RegExp(`packets: +${want.length}\\n`));
  assert.match(text, /link type: +Ethernet \(1\)/);
  assert.match(text, new RegExp(`first: +${want[0]!.tsSec}\\.${String(want[0]!.tsNsec).padStart(9, '0')}`));
});
