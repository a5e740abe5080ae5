/**
 * pcapng features the fixtures do not have, in files built by hand here: simple packet blocks,
 * obsolete packet blocks, several sections with different byte orders, blocks to skip,
 * if_tsoffset and binary timestamp resolutions, empty captures.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPcapWriter, createPcapngWriter, openCapture, readAllPackets, summarizeCapture } from '../../src/pcap/index.js';

const dir = mkdtempSync(join(tmpdir(), 'nm-pcapng-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const temp = (bytes: Uint8Array): string => {
  const path = join(dir, `b${counter++}.pcapng`);
  writeFileSync(path, bytes);
  return path;
};

/** Builds pcapng blocks in one byte order. */
class Blocks {
  private readonly parts: Buffer[] = [];
  constructor(private readonly le: boolean) {}
  private u16(n: number): Buffer { const b = Buffer.alloc(2); if (this.le) b.writeUInt16LE(n); else b.writeUInt16BE(n); return b; }
  private u32(n: number): Buffer { const b = Buffer.alloc(4); if (this.le) b.writeUInt32LE(n); else b.writeUInt32BE(n); return b; }
  private pad(b: Buffer): Buffer { return Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]); }
  option(code: number, value: Buffer): Buffer { return Buffer.concat([this.u16(code), this.u16(value.length), this.pad(value)]); }
  options(...opts: Buffer[]): Buffer { return opts.length === 0 ? Buffer.alloc(0) : Buffer.concat([...opts, this.u32(0)]); }
  block(type: number, body: Buffer): this {
    const len = 12 + body.length;
    this.parts.push(Buffer.concat([this.u32(type), this.u32(len), body, this.u32(len)]));
    return this;
  }
  shb(...opts: Buffer[]): this {
    return this.block(0x0a0d0d0a, Buffer.concat([this.u32(0x1a2b3c4d), this.u16(1), this.u16(0), Buffer.alloc(8, 0xff), this.options(...opts)]));
  }
  idb(linkType: number, snaplen: number, ...opts: Buffer[]): this {
    return this.block(1, Buffer.concat([this.u16(linkType), this.u16(0), this.u32(snaplen), this.options(...opts)]));
  }
  epb(iface: number, high: number, low: number, data: Buffer, origLen = data.length, ...opts: Buffer[]): this {
    return this.block(6, Buffer.concat([this.u32(iface), this.u32(high), this.u32(low), this.u32(data.length), this.u32(origLen), this.pad(data), this.options(...opts)]));
  }
  spb(origLen: number, data: Buffer): this {
    return this.block(3, Buffer.concat([this.u32(origLen), this.pad(data)]));
  }
  pb(iface: number, high: number, low: number, data: Buffer): this {
    return this.block(2, Buffer.concat([this.u16(iface), this.u16(0), this.u32(high), this.u32(low), this.u32(data.length), this.u32(data.length), this.pad(data)]));
  }
  tsoffset(seconds: number): Buffer {
    const b = Buffer.alloc(8);
    if (this.le) b.writeBigInt64LE(BigInt(seconds)); else b.writeBigInt64BE(BigInt(seconds));
    return this.option(14, b);
  }
  bytes(): Buffer { return Buffer.concat(this.parts); }
}

const data = (n: number, fill: number): Buffer => Buffer.alloc(n, fill);

test('simple packet blocks: caplen is the smaller of wire length, block and snap length; no timestamp', async () => {
  const b = new Blocks(true).shb().idb(1, 64).spb(100, data(100, 1)).spb(20, data(20, 2)).bytes();
  // The first SPB holds 100 bytes but the interface snaps at 64.
  const { packets } = await readAllPackets(temp(b));
  assert.deepEqual(packets.map((p) => [p.caplen, p.origLen, p.tsSec, p.tsNsec, p.data[0]]), [[64, 100, 0, 0, 1], [20, 20, 0, 0, 2]]);
});

test('obsolete packet blocks are read like enhanced ones', async () => {
  const b = new Blocks(false).shb().idb(1, 0).idb(113, 0).pb(1, 0, 3_000_001, data(30, 7)).bytes();
  const { info, packets } = await readAllPackets(temp(b));
  assert.equal(info.byteOrder, 'big');
  assert.deepEqual(packets.map((p) => [p.interfaceId, p.linkType, p.tsSec, p.tsNsec, p.caplen]), [[1, 113, 3, 1000, 30]]);
});

test('several sections, each with its byte order and interfaces: interface ids are file-wide', async () => {
  const first = new Blocks(true).shb(new Blocks(true).option(1, Buffer.from('one')))
    .idb(1, 0).epb(0, 0, 1_000_000, data(40, 1)).bytes();
  const second = new Blocks(false).shb(new Blocks(false).option(1, Buffer.from('two')))
    .block(0x0bad, Buffer.alloc(8)) // a custom block, skipped
    .idb(276, 0, new Blocks(false).option(9, Buffer.of(9)), new Blocks(false).option(2, Buffer.from('any')))
    .idb(1, 0)
    .block(5, Buffer.alloc(12)) // interface statistics, skipped
    .epb(0, 0, 2_000_000_005, data(41, 2))
    .epb(1, 0, 7, data(42, 3), 1500, new Blocks(false).option(1, Buffer.from('a')), new Blocks(false).option(1, Buffer.from('b')))
    .bytes();
  const { info, packets } = await readAllPackets(temp(Buffer.concat([first, second])), { chunkSize: 50 });
  assert.equal(info.byteOrder, 'little');
  assert.deepEqual(info.sectionComments, ['one', 'two']);
  assert.deepEqual(info.interfaces.map((i) => [i.linkType, i.section, i.tsresol, i.name]), [[1, 0, 6, undefined], [276, 1, 9, 'any'], [1, 1, 6, undefined]]);
  assert.deepEqual(packets.map((p) => [p.interfaceId, p.linkType, p.tsSec, p.tsNsec, p.caplen, p.origLen, p.comment, p.data[0]]), [
    [0, 1, 1, 0, 40, 40, undefined, 1],
    [1, 276, 2, 5, 41, 41, undefined, 2],
    [2, 1, 0, 7000, 42, 1500, 'a\nb', 3],
  ]);
});

test('a packet of a later section cannot use an interface of an earlier one', async () => {
  const b = Buffer.concat([new Blocks(true).shb().idb(1, 0).bytes(), new Blocks(true).shb().epb(0, 0, 0, data(10, 0)).bytes()]);
  await assert.rejects(openCapture(temp(b)), /enhanced packet block refers to interface 0 but its section describes none at byte \d+$/);
});

test('if_tsoffset and a binary resolution (2^-10 s) give the right seconds and nanoseconds', async () => {
  const o = new Blocks(true);
  const b = o.shb().idb(1, 0, o.option(9, Buffer.of(0x80 | 10)), o.tsoffset(1_600_000_000)).epb(0, 0, 5 * 1024 + 512, data(14, 0)).bytes();
  const reader = await openCapture(temp(b));
  assert.equal(reader.nanosecond, false);
  assert.equal(reader.interfaces[0]!.tsOffset, 1_600_000_000);
  const got: number[][] = [];
  for await (const p of reader) got.push([p.tsSec, p.tsNsec]);
  assert.deepEqual(got, [[1_600_000_005, 500_000_000]]);
});

test('captures without packets: header-only pcap, pcapng with only a section header', async () => {
  const pcap = join(dir, 'empty.pcap');
  const w = createPcapWriter(pcap, { linkType: 113 });
  await w.close();
  const ng = join(dir, 'empty.pcapng');
  const w2 = createPcapngWriter(ng, { interfaces: [{ linkType: 101 }] });
  await w2.close();
  const r1 = await openCapture(pcap);
  assert.equal(r1.linkType, 113);
  assert.equal(await r1.forEach(() => {}), 0);
  const r2 = await openCapture(ng);
  assert.equal(r2.linkType, 101);
  const bare = await openCapture(temp(new Blocks(true).shb().bytes()));
  assert.equal(bare.linkType, undefined);
  assert.equal(bare.format, 'pcapng');
  const s = await summarizeCapture(ng);
  assert.equal(s.packets, 0);
  assert.equal(s.first, undefined);
});
