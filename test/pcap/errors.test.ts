/** Truncated and corrupt files: every good packet first, then one CaptureError naming the byte offset. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CaptureError, openCapture, openCaptureSync, forEachPacket } from '../../src/pcap/index.js';
import { NetmangleError } from '../../src/errors.js';
import { asExpected, expectedPackets, fixture, type ExpectedPacket } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'nm-pcap-err-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

let fileCounter = 0;
function writeTemp(bytes: Uint8Array, name = `f${fileCounter++}.cap`): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** Reads `path` three ways (for await, async forEach, sync forEach) and returns the packets each got and the error each threw. */
async function readUntilError(path: string, chunkSize?: number): Promise<Array<{ got: ExpectedPacket[]; err: CaptureError }>> {
  const results: Array<{ got: ExpectedPacket[]; err: CaptureError }> = [];
  const catchIt = (e: unknown): CaptureError => {
    assert.ok(e instanceof CaptureError, `a CaptureError, not ${String(e)}`);
    return e;
  };
  {
    const got: ExpectedPacket[] = [];
    let err: CaptureError | undefined;
    try {
      for await (const p of await openCapture(path, { chunkSize })) got.push(asExpected(p));
    } catch (e) { err = catchIt(e); }
    assert.ok(err, 'for await threw');
    results.push({ got, err });
  }
  {
    const got: ExpectedPacket[] = [];
    let err: CaptureError | undefined;
    const reader = await openCapture(path, { chunkSize });
    await reader.forEach((p) => { got.push(asExpected(p)); }).catch((e: unknown) => { err = catchIt(e); });
    assert.ok(err, 'forEach rejected');
    results.push({ got, err });
  }
  {
    const got: ExpectedPacket[] = [];
    let err: CaptureError | undefined;
    try {
      forEachPacket(path, (p) => { got.push(asExpected(p)); }, { chunkSize });
    } catch (e) { err = catchIt(e); }
    assert.ok(err, 'sync forEachPacket threw');
    results.push({ got, err });
  }
  return results;
}

/** Offsets of the pcap records of a little-endian pcap file. */
function pcapRecordOffsets(bytes: Buffer): number[] {
  const offsets: number[] = [];
  for (let p = 24; p < bytes.length; p += 16 + bytes.readUInt32LE(p + 8)) offsets.push(p);
  return offsets;
}

/** Offsets and types of the blocks of a little-endian pcapng file. */
function pcapngBlocks(bytes: Buffer): Array<{ offset: number; type: number; length: number }> {
  const blocks = [];
  for (let p = 0; p < bytes.length; p += bytes.readUInt32LE(p + 4)) blocks.push({ offset: p, type: bytes.readUInt32LE(p), length: bytes.readUInt32LE(p + 4) });
  return blocks;
}

test('pcap cut inside a packet: the packets before it, then "truncated packet record at byte N (needs …, … left)"', async () => {
  const bytes = readFileSync(fixture('tcpdump-us.pcap'));
  const want = expectedPackets('tcpdump-us.pcap');
  const offsets = pcapRecordOffsets(bytes);
  const k = 7;
  const at = offsets[k]!;
  const caplen = bytes.readUInt32LE(at + 8);
  const path = writeTemp(bytes.subarray(0, at + 16 + 10), 'cut.pcap');
  for (const chunkSize of [undefined, 13]) {
    for (const { got, err } of await readUntilError(path, chunkSize)) {
      assert.deepEqual(got, want.slice(0, k));
      assert.equal(err.message, `${path}: truncated packet record at byte ${at} (needs ${16 + caplen} bytes, 26 left)`);
      assert.equal(err.offset, at);
      assert.ok(err instanceof NetmangleError && err.hint !== undefined);
    }
  }
});

test('pcap cut inside a record header and inside the file header', async () => {
  const bytes = readFileSync(fixture('tcpdump-ns.pcap'));
  const at = pcapRecordOffsets(bytes)[3]!;
  const path = writeTemp(bytes.subarray(0, at + 5));
  for (const { got, err } of await readUntilError(path)) {
    assert.equal(got.length, 3);
    assert.match(err.message, new RegExp(`truncated packet record header at byte ${at} \\(needs 16 bytes, 5 left\\)$`));
  }
  const header = writeTemp(bytes.subarray(0, 10));
  await assert.rejects(openCapture(header), { message: `${header}: truncated pcap file header at byte 0 (needs 24 bytes, 10 left)` });
  assert.throws(() => openCaptureSync(header), /truncated pcap file header at byte 0/);
});

test('pcapng cut inside an enhanced packet block', async () => {
  const bytes = readFileSync(fixture('dumpcap-multi-comments.pcapng'));
  const want = expectedPackets('dumpcap-multi-comments.pcapng');
  const epbs = pcapngBlocks(bytes).filter((b) => b.type === 6);
  const k = 12;
  const block = epbs[k]!;
  const path = writeTemp(bytes.subarray(0, block.offset + 40), 'cut.pcapng');
  for (const chunkSize of [undefined, 64]) {
    for (const { got, err } of await readUntilError(path, chunkSize)) {
      assert.deepEqual(got, want.slice(0, k));
      assert.equal(err.message, `${path}: truncated enhanced packet block at byte ${block.offset} (needs ${block.length} bytes, 40 left)`);
      assert.equal(err.offset, block.offset);
    }
  }
});

test('pcap record with an impossible captured length is reported as corrupt at its offset', async () => {
  const bytes = Buffer.from(readFileSync(fixture('tcpdump-us.pcap')));
  const at = pcapRecordOffsets(bytes)[4]!;
  bytes.writeUInt32LE(0x7fff0000, at + 8);
  for (const { got, err } of await readUntilError(writeTemp(bytes))) {
    assert.equal(got.length, 4);
    assert.match(err.message, new RegExp(`bad packet record: captured length ${0x7fff0000} is larger than the snapshot length 262144 at byte ${at}$`));
    assert.equal(err.offset, at);
  }
});

test('pcapng corruptions: bad block length, mismatched trailer, unknown interface, bad byte-order magic, overrunning option', async () => {
  const original = readFileSync(fixture('dumpcap-multi-comments.pcapng'));
  const blocks = pcapngBlocks(original);
  const epbs = blocks.filter((b) => b.type === 6);
  const target = epbs[5]!;
  const cases: Array<{ change: (b: Buffer) => void; message: RegExp; offset: number; before: number }> = [
    { change: (b) => b.writeUInt32LE(13, target.offset + 4), message: new RegExp(`bad block length 13 in enhanced packet block at byte ${target.offset}$`), offset: target.offset, before: 5 },
    { change: (b) => b.writeUInt32LE(8, target.offset + 4), message: new RegExp(`bad block length 8 in enhanced packet block at byte ${target.offset}$`), offset: target.offset, before: 5 },
    { change: (b) => b.writeUInt32LE(0x7ffffff0, target.offset + 4), message: /bad block length 2147483632 in enhanced packet block/, offset: target.offset, before: 5 },
    {
      change: (b) => b.writeUInt32LE(target.length + 4, target.offset + target.length - 4),
      message: new RegExp(`bad block length: enhanced packet block says ${target.length} bytes at its start and ${target.length + 4} at its end at byte ${target.offset}$`),
      offset: target.offset, before: 5,
    },
    { change: (b) => b.writeUInt32LE(7, target.offset + 8), message: new RegExp(`enhanced packet block refers to interface 7 but its section describes only 2 at byte ${target.offset}$`), offset: target.offset, before: 5 },
    { change: (b) => b.writeUInt32LE(0x11223344, 8), message: /bad byte-order magic 0x11223344 in section header block at byte 0$/, offset: 0, before: 0 },
    { change: (b) => b.writeUInt32LE(target.length, target.offset + 20), message: new RegExp(`captured length ${target.length} does not fit in its ${target.length}-byte block at byte ${target.offset}$`), offset: target.offset, before: 5 },
  ];
  // The first packet's comment option: make it claim more bytes than the block has.
  const first = epbs[0]!;
  const optAt = first.offset + 28 + ((original.readUInt32LE(first.offset + 20) + 3) & ~3);
  assert.equal(original.readUInt16LE(optAt), 1, 'the first packet has an opt_comment');
  cases.push({ change: (b) => b.writeUInt16LE(500, optAt + 2), message: new RegExp(`bad option 1 of the enhanced packet block at byte ${first.offset}: its 500 bytes run past the end of the block at byte ${optAt}$`), offset: optAt, before: 0 });

  const want = expectedPackets('dumpcap-multi-comments.pcapng');
  for (const c of cases) {
    const bytes = Buffer.from(original);
    c.change(bytes);
    const path = writeTemp(bytes);
    if (c.before === 0) {
      // The error comes before any packet: opening fails.
      await assert.rejects(openCapture(path), (e: unknown) => e instanceof CaptureError && c.message.test(e.message) && e.offset === c.offset);
      continue;
    }
    for (const { got, err } of await readUntilError(path, 100)) {
      assert.deepEqual(got, want.slice(0, c.before));
      assert.match(err.message, c.message);
      assert.equal(err.offset, c.offset);
    }
  }
});

test('files that are not captures are refused with what they are', async () => {
  const cases: Array<[Uint8Array, RegExp]> = [
    [Buffer.from('GET / HTTP/1.1\r\n\r\n'), /: not a pcap or pcapng file \(magic 0x47455420\)$/],
    [new Uint8Array(0), /: empty file: not a pcap or pcapng file$/],
    [Buffer.from([0xd4, 0xc3]), /: truncated file header at byte 0 \(needs 4 bytes, 2 left\)$/],
    [gzipSync(readFileSync(fixture('tcpdump-us.pcap'))), /not a pcap or pcapng file \(magic 0x1f8b0800\)$/],
    [Buffer.from([0x34, 0xcd, 0xb2, 0xa1, 2, 0, 4, 0, ...new Array(16).fill(0)]), /modified \("Kuznetzov"\) pcap files are not supported$/],
    [Buffer.from([0xd4, 0xc3, 0xb2, 0xa1, 3, 0, 0, 0, ...new Array(16).fill(0)]), /unsupported pcap version 3\.0/],
  ];
  for (const [bytes, message] of cases) {
    const path = writeTemp(bytes);
    await assert.rejects(openCapture(path), (e: unknown) => e instanceof CaptureError && message.test(e.message) && e.message.startsWith(path));
    assert.throws(() => openCaptureSync(path), message);
  }
  const gz = writeTemp(gzipSync(Buffer.from('x')));
  await assert.rejects(openCapture(gz), (e: unknown) => e instanceof CaptureError && /gunzip/.test(e.hint ?? ''));
  await assert.rejects(openCapture(join(dir, 'missing.pcap')), (e: unknown) =>
    e instanceof CaptureError && e.message === `${join(dir, 'missing.pcap')}: cannot open: no such file or directory` && e.exitCode === 2);
  assert.throws(() => openCaptureSync(dir), /cannot (open|read): is a directory/);
});

test('leaving a loop early closes the file and later next() calls report the end', async () => {
  const reader = await openCapture(fixture('tcpdump-us.pcap'));
  let n = 0;
  for await (const _ of reader) if (++n === 3) break;
  assert.equal(n, 3);
  assert.deepEqual(await reader.next(), { value: undefined, done: true });
  const sync = openCaptureSync(fixture('tcpdump-us.pcap'));
  assert.equal(sync.forEach(() => false), 1);
  assert.equal(sync.next().done, true);
});
