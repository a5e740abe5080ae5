/**
 * Streaming capture writers: records are encoded into one large buffer that is written out
 * when full, so a writer costs a few field stores and one copy per packet. Timestamps are
 * written as given (tsSec, tsNsec), so a replay keeps the input's times.
 *
 * To a path, writes are blocking (fs.writeSync of 1 MiB chunks), which also makes the writers
 * usable from the synchronous readers' callbacks. To a Writable, full chunks are handed to the
 * stream; `write` returns false when the stream asks to wait, and `drained()` resolves when it
 * may go on.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { CaptureError, describeFsError } from './capture-error.js';
import { LINKTYPE_ETHERNET } from './linktype.js';
import { CapturePacket, type ByteOrder, type CaptureFormat, type CaptureInterface, type PacketLike } from './packet.js';
import { MAX_RECORD_BYTES } from './parser.js';
import { timestampResolution, unitsFromTimestamp, type TimestampResolution, type UnitsTarget } from './timestamp.js';

const OUTPUT_CHUNK = 1 << 20;
const DEFAULT_SNAPLEN = 262144;

interface ByteSink {
  /** Writes out[0, length); returns false if the consumer asked to wait. May keep `out` (then returns true in `handedOff`). */
  write(out: Buffer, length: number): { ok: boolean; handedOff: boolean };
  drained(): Promise<void>;
  close(): Promise<void>;
}

class FileSink implements ByteSink {
  constructor(private fd: number, private readonly name: string) {}
  write(out: Buffer, length: number): { ok: boolean; handedOff: boolean } {
    let done = 0;
    try {
      while (done < length) done += writeSync(this.fd, out, done, length - done);
    } catch (err) {
      throw new CaptureError(this.name, `cannot write: ${describeFsError(err)}`, { cause: err });
    }
    return FILE_WRITTEN;
  }
  drained(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      closeSync(fd);
    }
    return Promise.resolve();
  }
}
const FILE_WRITTEN = { ok: true, handedOff: false };

class StreamSink implements ByteSink {
  private error: unknown = undefined;
  constructor(private readonly stream: Writable, private readonly name: string) {
    stream.on('error', (err) => { this.error = err; });
  }
  private check(): void {
    if (this.error !== undefined) {
      throw new CaptureError(this.name, `cannot write: ${describeFsError(this.error)}`, { cause: this.error });
    }
  }
  write(out: Buffer, length: number): { ok: boolean; handedOff: boolean } {
    this.check();
    const ok = this.stream.write(length === out.length ? out : out.subarray(0, length));
    return { ok, handedOff: true };
  }
  drained(): Promise<void> {
    this.check();
    if (!this.stream.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => { this.stream.off('error', onError); resolve(); };
      const onError = (err: unknown): void => { this.stream.off('drain', onDrain); reject(new CaptureError(this.name, `cannot write: ${describeFsError(err)}`, { cause: err })); };
      this.stream.once('drain', onDrain);
      this.stream.once('error', onError);
    });
  }
  close(): Promise<void> {
    this.check();
    if (this.stream === process.stdout || this.stream === process.stderr) {
      // Never end the process's own streams; wait until what we wrote is flushed.
      return new Promise((resolve) => { this.stream.write(Buffer.alloc(0), () => resolve()); });
    }
    return new Promise((resolve, reject) => {
      this.stream.end((err?: unknown) => {
        if (err) reject(new CaptureError(this.name, `cannot write: ${describeFsError(err)}`, { cause: err }));
        else resolve();
      });
    });
  }
}

function openSink(dest: string | Writable, name: string | undefined): { sink: ByteSink; name: string } {
  if (typeof dest === 'string' && dest !== '-') {
    const n = name ?? dest;
    let fd: number;
    try {
      fd = openSync(dest, 'w');
    } catch (err) {
      throw new CaptureError(n, `cannot create: ${describeFsError(err)}`, { cause: err, exitCode: 2 });
    }
    return { sink: new FileSink(fd, n), name: n };
  }
  const stream = dest === '-' ? process.stdout : dest as Writable;
  const n = name ?? (dest === '-' ? 'stdout' : 'stream');
  return { sink: new StreamSink(stream, n), name: n };
}

/** Options of a writer; see createPcapWriter and createPcapngWriter. */
export interface CaptureWriterOptions {
  /** Name used in error messages; defaults to the path, or "stdout" / "stream". */
  name?: string;
  /** Write big-endian headers (default: little-endian, like every current tool on x86 and ARM). */
  bigEndian?: boolean;
}

export interface PcapWriterOptions extends CaptureWriterOptions {
  /** LINKTYPE_* of every packet (default Ethernet, 1). */
  linkType?: number;
  /** Longer packets are cut to this many bytes (default 262144). */
  snaplen?: number;
  /** Nanosecond timestamps (magic a1b23c4d) instead of microseconds (default false). */
  nanosecond?: boolean;
}

export interface PcapngWriterOptions extends CaptureWriterOptions {
  /**
   * The interfaces, in id order (default: one Ethernet interface). `tsresol` (default 6, or 9
   * with `nanosecond`) sets each interface's timestamp unit; `tsOffset` is ignored, times are
   * written absolute. A reader's `interfaces` can be passed as they are.
   */
  interfaces?: ReadonlyArray<Partial<CaptureInterface> & { linkType: number }>;
  /** Section header comments (shb_comment). */
  comments?: readonly string[];
  /** Default tsresol 9 (nanoseconds) for interfaces that do not set one. */
  nanosecond?: boolean;
  /** shb_userappl (default "netmangle"). */
  application?: string;
}

/** Per-packet options of `write`. */
export interface WriteOptions {
  /** pcapng opt_comment; overrides the packet's own `comment`. pcap files have no place for it. */
  comment?: string;
}

/** What both writers offer. */
export interface CaptureWriter {
  readonly name: string;
  readonly format: CaptureFormat;
  readonly byteOrder: ByteOrder;
  /** Packets written so far. */
  readonly packetCount: number;
  /**
   * Appends a packet. Returns false when writing to a stream that asked to wait: await
   * `drained()` before writing much more. Throws a CaptureError after close or on a write error.
   */
  write(pkt: PacketLike, opts?: WriteOptions): boolean;
  /** The allocation-free form of write(): the packet is bytes[offset, offset + length). */
  writeBytes(bytes: Uint8Array, offset: number, length: number, tsSec: number, tsNsec: number, origLen: number,
    interfaceId?: number, comment?: string): boolean;
  /** See BufferedWriter.appendRecords: records already encoded by this writer's rules, gathered and copied in one go. */
  appendRecords(bytes: Uint8Array, start: number, end: number, packets: number): boolean;
  commitRecords(): void;
  /** Writes out what is buffered. */
  flush(): boolean;
  /** Resolves when a stream destination is ready for more (immediately for files). */
  drained(): Promise<void>;
  /** Flushes and closes the file (ends the stream; process.stdout is flushed, not ended). Idempotent. */
  close(): Promise<void>;
}

/** Below this many bytes copyIn copies in JavaScript. */
const SMALL_COPY = 160;
const copyBytes = Buffer.prototype.copy as (this: Uint8Array, target: Uint8Array, targetStart: number, sourceStart: number, sourceEnd: number) => number;

abstract class BufferedWriter implements CaptureWriter {
  abstract readonly format: CaptureFormat;
  readonly name: string;
  readonly byteOrder: ByteOrder;
  packetCount = 0;
  protected readonly le: boolean;
  protected out: Buffer;
  protected view: DataView;
  protected pos = 0;
  private sink: ByteSink | null;
  private ok = true;

  constructor(dest: string | Writable, opts: CaptureWriterOptions) {
    const { sink, name } = openSink(dest, opts.name);
    this.sink = sink;
    this.name = name;
    this.le = opts.bigEndian !== true;
    this.byteOrder = this.le ? 'little' : 'big';
    this.out = Buffer.allocUnsafe(OUTPUT_CHUNK);
    this.view = new DataView(this.out.buffer, this.out.byteOffset, this.out.byteLength);
  }

  /** Makes room for `n` more bytes and returns the offset to write them at. */
  protected reserve(n: number): number {
    if (this.recBytes !== null) this.commitRecords();
    if (this.pos + n > this.out.length) {
      this.flush();
      if (n > this.out.length) this.replaceBuffer(n);
    }
    return this.pos;
  }

  private replaceBuffer(size: number): void {
    this.out = Buffer.allocUnsafe(Math.max(size, OUTPUT_CHUNK));
    this.view = new DataView(this.out.buffer, this.out.byteOffset, this.out.byteLength);
  }

  /**
   * Copies a packet into the output buffer. Small packets (most of a replay) are copied four
   * bytes at a time through DataViews: a native copy call costs more than the copy itself at
   * that size. The source's DataView is cached, since packets keep coming from one buffer.
   */
  protected copyIn(bytes: Uint8Array, offset: number, length: number, at: number): void {
    if (length > SMALL_COPY) {
      copyBytes.call(bytes, this.out, at, offset, offset + length);
      return;
    }
    // Two sources cached: a replay alternates between the reader's buffer (packets it left alone) and the VM's (packets it changed).
    let src: DataView;
    if (bytes === this.sourceBytes) src = this.sourceView;
    else if (bytes === this.otherBytes) src = this.otherView;
    else {
      this.otherBytes = bytes;
      this.otherView = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      src = this.otherView;
    }
    if (bytes !== this.sourceBytes) {
      // The most recent source first, next time.
      this.otherBytes = this.sourceBytes;
      const v = this.otherView;
      this.otherView = this.sourceView;
      this.sourceBytes = bytes;
      this.sourceView = v;
    }
    const dst = this.view;
    let j = 0;
    for (; j + 4 <= length; j += 4) dst.setUint32(at + j, src.getUint32(offset + j, true), true);
    const out = this.out;
    for (; j < length; j++) out[at + j] = bytes[offset + j]!;
  }
  private sourceBytes: Uint8Array | null = null;
  private sourceView: DataView = new DataView(new ArrayBuffer(0));
  private otherBytes: Uint8Array | null = null;
  private otherView: DataView = this.sourceView;

  protected checkOpen(): void {
    if (this.sink === null) throw new CaptureError(this.name, 'write after close');
  }

  write(pkt: PacketLike, opts?: WriteOptions): boolean {
    const comment = opts?.comment ?? pkt.comment;
    if (pkt instanceof CapturePacket) {
      return this.writeBytes(pkt.bytes, pkt.offset, pkt.caplen, pkt.tsSec, pkt.tsNsec, pkt.origLen, pkt.interfaceId, comment);
    }
    const data = pkt.data;
    return this.writeBytes(data, 0, data.length, pkt.tsSec, pkt.tsNsec, pkt.origLen ?? data.length, pkt.interfaceId ?? 0, comment);
  }

  abstract writeBytes(bytes: Uint8Array, offset: number, length: number, tsSec: number, tsNsec: number, origLen: number,
    interfaceId?: number, comment?: string): boolean;

  /**
   * Appends `packets` whole records already encoded as this writer would encode them, the
   * bytes[start, end) of another buffer: a pcap reader's own records of packets a replay left
   * alone. Adjacent records of one buffer are gathered and copied in one go by the next other
   * write, flush or commitRecords; until then `bytes` must stay as it is (call commitRecords
   * before reusing it).
   */
  appendRecords(bytes: Uint8Array, start: number, end: number, packets: number): boolean {
    if (bytes !== this.recBytes || start !== this.recEnd) {
      this.checkOpen();
      this.commitRecords();
      this.recBytes = bytes;
      this.recStart = start;
    }
    this.recEnd = end;
    this.packetCount += packets;
    return this.writable;
  }

  /** Copies the records appendRecords gathered into the output buffer (writing it out as it fills). */
  commitRecords(): void {
    const bytes = this.recBytes;
    if (bytes === null) return;
    this.recBytes = null;
    let s = this.recStart;
    const end = this.recEnd;
    while (s < end) {
      if (this.pos === this.out.length) this.writeOut();
      const n = Math.min(end - s, this.out.length - this.pos);
      copyBytes.call(bytes, this.out, this.pos, s, s + n);
      this.pos += n;
      s += n;
    }
  }
  private recBytes: Uint8Array | null = null;
  private recStart = 0;
  private recEnd = -1;

  flush(): boolean {
    this.checkOpen();
    this.commitRecords();
    return this.writeOut();
  }

  private writeOut(): boolean {
    if (this.pos > 0) {
      const r = this.sink!.write(this.out, this.pos);
      this.ok = r.ok;
      this.pos = 0;
      if (r.handedOff) this.replaceBuffer(OUTPUT_CHUNK);
    }
    return this.ok;
  }

  protected get writable(): boolean {
    return this.ok;
  }

  drained(): Promise<void> {
    if (this.sink === null) return Promise.resolve();
    return this.sink.drained().then(() => { this.ok = true; });
  }

  async close(): Promise<void> {
    if (this.sink === null) return;
    try {
      this.flush();
    } finally {
      const sink = this.sink;
      this.sink = null;
      await sink!.close();
    }
  }

  protected checkTimestamp(tsSec: number, tsNsec: number): void {
    // Sub-second values of 1e9 and more come from sloppy inputs; they are kept, not judged.
    if (!(tsSec >= 0 && tsSec <= 0xffffffff && tsNsec >= 0 && tsNsec <= 0xffffffff)) {
      throw new CaptureError(this.name, `packet ${this.packetCount} has timestamp ${tsSec} s + ${tsNsec} ns, which a capture file cannot hold`);
    }
  }
}

/** A pcap (libpcap) file writer. */
export class PcapWriter extends BufferedWriter {
  readonly format = 'pcap' as const;
  readonly linkType: number;
  readonly snaplen: number;
  readonly nanosecond: boolean;

  /** Use createPcapWriter(). */
  constructor(dest: string | Writable, opts: PcapWriterOptions) {
    super(dest, opts);
    this.linkType = opts.linkType ?? LINKTYPE_ETHERNET;
    this.snaplen = opts.snaplen ?? DEFAULT_SNAPLEN;
    this.nanosecond = opts.nanosecond === true;
    if (!(this.snaplen > 0 && this.snaplen <= MAX_RECORD_BYTES)) {
      throw new CaptureError(this.name, `snapshot length ${this.snaplen} is out of range (1 to ${MAX_RECORD_BYTES})`, { exitCode: 2 });
    }
    const v = this.view;
    const le = this.le;
    v.setUint32(0, this.nanosecond ? 0xa1b23c4d : 0xa1b2c3d4, le);
    v.setUint16(4, 2, le);
    v.setUint16(6, 4, le);
    v.setUint32(8, 0, le); // thiszone
    v.setUint32(12, 0, le); // sigfigs
    v.setUint32(16, this.snaplen, le);
    v.setUint32(20, this.linkType, le);
    this.pos = 24;
  }

  writeBytes(bytes: Uint8Array, offset: number, length: number, tsSec: number, tsNsec: number, origLen: number): boolean {
    this.checkOpen();
    this.checkTimestamp(tsSec, tsNsec);
    const caplen = length > this.snaplen ? this.snaplen : length;
    const p = this.reserve(16 + caplen);
    const v = this.view;
    const le = this.le;
    v.setUint32(p, tsSec, le);
    v.setUint32(p + 4, this.nanosecond ? tsNsec : Math.floor(tsNsec / 1000), le);
    v.setUint32(p + 8, caplen, le);
    v.setUint32(p + 12, origLen > length ? origLen : length, le);
    this.copyIn(bytes, offset, caplen, p + 16);
    this.pos = p + 16 + caplen;
    this.packetCount += 1;
    return this.writable;
  }
}

const textEncoder = new TextEncoder();

/** A pcapng writer: one section, its interfaces, then Enhanced Packet Blocks. */
export class PcapngWriter extends BufferedWriter {
  readonly format = 'pcapng' as const;
  readonly interfaces: readonly CaptureInterface[];
  private readonly resolutions: TimestampResolution[];
  private readonly units: UnitsTarget = { high: 0, low: 0 };

  /** Use createPcapngWriter(). */
  constructor(dest: string | Writable, opts: PcapngWriterOptions) {
    super(dest, opts);
    const defaultResol = opts.nanosecond === true ? 9 : 6;
    const given = opts.interfaces ?? [{ linkType: LINKTYPE_ETHERNET }];
    if (given.length === 0) throw new CaptureError(this.name, 'a pcapng writer needs at least one interface', { exitCode: 2 });
    this.interfaces = given.map((i) => ({
      linkType: i.linkType,
      snaplen: i.snaplen ?? 0,
      tsresol: i.tsresol ?? defaultResol,
      ...(i.name !== undefined ? { name: i.name } : {}),
      ...(i.description !== undefined ? { description: i.description } : {}),
      ...(i.comment !== undefined ? { comment: i.comment } : {}),
    }));
    this.resolutions = this.interfaces.map((i) => timestampResolution(i.tsresol));

    const shbOptions: Array<[number, Uint8Array]> = [];
    for (const c of opts.comments ?? []) shbOptions.push([1, textEncoder.encode(c)]);
    shbOptions.push([4, textEncoder.encode(opts.application ?? 'netmangle')]);
    this.writeBlock(0x0a0d0d0a, 16, (v, p) => {
      v.setUint32(p, 0x1a2b3c4d, this.le);
      v.setUint16(p + 4, 1, this.le);
      v.setUint16(p + 6, 0, this.le);
      v.setInt32(p + 8, -1, this.le); // section length unknown (-1 as 64 bits)
      v.setInt32(p + 12, -1, this.le);
    }, shbOptions);

    for (const iface of this.interfaces) {
      const options: Array<[number, Uint8Array]> = [];
      if (iface.name !== undefined) options.push([2, textEncoder.encode(iface.name)]);
      if (iface.description !== undefined) options.push([3, textEncoder.encode(iface.description)]);
      if (iface.tsresol !== 6) options.push([9, Uint8Array.of(iface.tsresol)]);
      if (iface.comment !== undefined) options.push([1, textEncoder.encode(iface.comment)]);
      this.writeBlock(1, 8, (v, p) => {
        v.setUint16(p, iface.linkType, this.le);
        v.setUint16(p + 2, 0, this.le);
        v.setUint32(p + 4, iface.snaplen, this.le);
      }, options);
    }
  }

  /** Writes a non-packet block: header, `bodyLen` fixed bytes filled by `body`, options, trailer. */
  private writeBlock(type: number, bodyLen: number, body: (v: DataView, at: number) => void, options: Array<[number, Uint8Array]>): void {
    let optLen = 0;
    for (const [, value] of options) optLen += 4 + ((value.length + 3) & ~3);
    if (optLen > 0) optLen += 4;
    const total = 12 + bodyLen + optLen;
    const p = this.reserve(total);
    const v = this.view;
    v.setUint32(p, type, this.le);
    v.setUint32(p + 4, total, this.le);
    body(v, p + 8);
    let o = p + 8 + bodyLen;
    for (const [code, value] of options) {
      o = this.putOption(o, code, value);
    }
    if (optLen > 0) {
      v.setUint32(o, 0, this.le);
      o += 4;
    }
    v.setUint32(o, total, this.le);
    this.pos = p + total;
  }

  private putOption(o: number, code: number, value: Uint8Array): number {
    const v = this.view;
    if (value.length > 0xffff) throw new CaptureError(this.name, `option ${code} is ${value.length} bytes, more than pcapng allows (65535)`);
    v.setUint16(o, code, this.le);
    v.setUint16(o + 2, value.length, this.le);
    this.out.set(value, o + 4);
    const padded = (value.length + 3) & ~3;
    this.out.fill(0, o + 4 + value.length, o + 4 + padded);
    return o + 4 + padded;
  }

  writeBytes(bytes: Uint8Array, offset: number, length: number, tsSec: number, tsNsec: number, origLen: number,
    interfaceId = 0, comment?: string): boolean {
    this.checkOpen();
    this.checkTimestamp(tsSec, tsNsec);
    const iface = this.interfaces[interfaceId];
    if (iface === undefined) {
      throw new CaptureError(this.name, `packet ${this.packetCount} is for interface ${interfaceId} but the writer has ${this.interfaces.length}`);
    }
    const caplen = iface.snaplen > 0 && length > iface.snaplen ? iface.snaplen : length;
    const padded = (caplen + 3) & ~3;
    const commentBytes = comment === undefined ? null : textEncoder.encode(comment);
    const optLen = commentBytes === null ? 0 : 4 + ((commentBytes.length + 3) & ~3) + 4;
    const total = 32 + padded + optLen;
    const p = this.reserve(total);
    const v = this.view;
    const le = this.le;
    const units = this.units;
    try {
      unitsFromTimestamp(units, tsSec, tsNsec, this.resolutions[interfaceId]!);
    } catch (err) {
      throw new CaptureError(this.name, `packet ${this.packetCount}: ${(err as Error).message}`);
    }
    v.setUint32(p, 6, le);
    v.setUint32(p + 4, total, le);
    v.setUint32(p + 8, interfaceId, le);
    v.setUint32(p + 12, units.high, le);
    v.setUint32(p + 16, units.low, le);
    v.setUint32(p + 20, caplen, le);
    v.setUint32(p + 24, origLen > length ? origLen : length, le);
    this.copyIn(bytes, offset, caplen, p + 28);
    let o = p + 28 + caplen;
    while (o < p + 28 + padded) this.out[o++] = 0;
    if (commentBytes !== null) {
      o = this.putOption(o, 1, commentBytes);
      v.setUint32(o, 0, le);
      o += 4;
    }
    v.setUint32(o, total, le);
    this.pos = p + total;
    this.packetCount += 1;
    return this.writable;
  }
}

/**
 * Creates a pcap writer to a path ("-" for standard output) or a Writable. The file header is
 * written at once (into the buffer); a path that cannot be created throws a CaptureError.
 */
export function createPcapWriter(dest: string | Writable, opts: PcapWriterOptions = {}): PcapWriter {
  return new PcapWriter(dest, opts);
}

/** Creates a pcapng writer (one section: SHB, one IDB per interface, then EPBs). */
export function createPcapngWriter(dest: string | Writable, opts: PcapngWriterOptions = {}): PcapngWriter {
  return new PcapngWriter(dest, opts);
}
