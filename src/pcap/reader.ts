/**
 * Streaming capture readers. Both read the file in large chunks into one reusable buffer and
 * hand out one reused CapturePacket (see its doc comment), so memory stays flat whatever the
 * file size.
 *
 * - `openCapture(pathOrReadable)`: asynchronous; `for await (const pkt of reader)` or the
 *   faster `await reader.forEach(fn)` (a plain callback per packet, one await per chunk).
 * - `openCaptureSync(path)` / `forEachPacket(path, fn)`: synchronous, fs.readSync; the fastest
 *   path for a whole-file replay or a benchmark.
 *
 * Errors in the file are CaptureErrors carrying the byte offset; every good packet before the
 * bad spot is delivered first.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { open as openAsync, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { CaptureError, describeFsError } from './capture-error.js';
import type { ByteOrder, CaptureFormat, CaptureInterface, CapturePacket } from './packet.js';
import { CaptureParser, DEFAULT_CHUNK_SIZE } from './parser.js';

export interface OpenCaptureOptions {
  /** Name used in error messages; defaults to the path, or "stdin" / "stream". */
  name?: string;
  /** Read size in bytes (default 1 MiB). Small values are for tests of record boundaries. */
  chunkSize?: number;
}

/** What is known about a capture once it is open (pcapng interfaces may grow while reading). */
export interface CaptureInfo {
  readonly name: string;
  readonly format: CaptureFormat;
  /** Byte order of the pcap header or of the first pcapng section. */
  readonly byteOrder: ByteOrder;
  /** pcap: the nanosecond magic; pcapng: the first interface's timestamps are finer than 1 µs. */
  readonly nanosecond: boolean;
  /** Link type of the first interface; undefined for a pcapng file with no interface. */
  readonly linkType: number | undefined;
  /** pcap: its one interface; pcapng: every interface seen so far, all sections, in file order. */
  readonly interfaces: readonly CaptureInterface[];
  /** pcapng section header comments (shb_comment), all sections. */
  readonly sectionComments: readonly string[];
  /** Packets delivered so far. */
  readonly packetCount: number;
}

type PacketCallback = (pkt: CapturePacket) => void | boolean;

abstract class CaptureReaderBase implements CaptureInfo {
  protected readonly parser: CaptureParser;
  /** A packet parsed while opening (to learn the interfaces) and not delivered yet. */
  protected pending = false;
  protected finished = false;
  protected readonly result: IteratorResult<CapturePacket> & { done: false };

  constructor(parser: CaptureParser) {
    this.parser = parser;
    this.result = { value: parser.packet, done: false };
  }

  get name(): string { return this.parser.name; }
  get format(): CaptureFormat { return this.parser.format!; }
  get byteOrder(): ByteOrder { return this.parser.byteOrder; }
  get nanosecond(): boolean { return this.parser.nanosecond; }
  get linkType(): number | undefined { return this.parser.interfaces[0]?.linkType; }
  get interfaces(): readonly CaptureInterface[] { return this.parser.interfaces; }
  get sectionComments(): readonly string[] { return this.parser.sectionComments; }
  get packetCount(): number { return this.parser.packetCount - (this.pending ? 1 : 0); }

  protected readError(err: unknown): CaptureError {
    if (err instanceof CaptureError) return err;
    return new CaptureError(this.parser.name, `cannot read: ${describeFsError(err)}`, { cause: err });
  }
}

const DONE: IteratorResult<CapturePacket> = { value: undefined, done: true };

// ---------------------------------------------------------------- asynchronous

interface AsyncByteSource {
  read(into: Buffer, offset: number, length: number): Promise<number>;
  close(): Promise<void>;
}

class FileHandleSource implements AsyncByteSource {
  constructor(private readonly fh: FileHandle) {}
  async read(into: Buffer, offset: number, length: number): Promise<number> {
    return (await this.fh.read(into, offset, length, null)).bytesRead;
  }
  close(): Promise<void> {
    return this.fh.close();
  }
}

class ReadableSource implements AsyncByteSource {
  private readonly chunks: AsyncIterator<unknown>;
  private chunk: Buffer | null = null;
  private chunkPos = 0;
  constructor(private readonly stream: Readable) {
    this.chunks = stream[Symbol.asyncIterator]();
  }
  async read(into: Buffer, offset: number, length: number): Promise<number> {
    while (this.chunk === null || this.chunkPos >= this.chunk.length) {
      const r = await this.chunks.next();
      if (r.done) return 0;
      const v = r.value;
      this.chunk = Buffer.isBuffer(v) ? v : typeof v === 'string' ? Buffer.from(v, 'latin1') : Buffer.from(v as Uint8Array);
      this.chunkPos = 0;
    }
    const n = Math.min(length, this.chunk.length - this.chunkPos);
    this.chunk.copy(into, offset, this.chunkPos, this.chunkPos + n);
    this.chunkPos += n;
    return n;
  }
  async close(): Promise<void> {
    this.chunk = null;
    await this.chunks.return?.();
    if (this.stream !== process.stdin) this.stream.destroy();
  }
}

/**
 * An open capture read asynchronously. Iterate it once, with `for await` or `forEach`; the
 * file is closed at the end, on an error, or when the loop is left early.
 */
export class CaptureReader extends CaptureReaderBase implements AsyncIterableIterator<CapturePacket> {
  private source: AsyncByteSource | null;

  /** Use openCapture(). */
  constructor(parser: CaptureParser, source: AsyncByteSource) {
    super(parser);
    this.source = source;
  }

  /** Reads up to the first packet so that format and interfaces are known. */
  async start(): Promise<void> {
    try {
      for (;;) {
        if (this.parser.next()) {
          this.pending = true;
          return;
        }
        if (this.parser.eof) {
          this.parser.finish();
          this.finished = true;
          await this.close();
          return;
        }
        await this.refill();
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  private async refill(): Promise<void> {
    const source = this.source;
    if (source === null) throw new CaptureError(this.parser.name, 'read after close');
    const at = this.parser.prepareRead();
    let n: number;
    try {
      n = await source.read(this.parser.buf, at, this.parser.buf.length - at);
    } catch (err) {
      throw this.readError(err);
    }
    this.parser.commitRead(n);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<CapturePacket>> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve(this.result);
    }
    if (this.finished) return Promise.resolve(DONE);
    try {
      if (this.parser.next()) return Promise.resolve(this.result);
    } catch (err) {
      return this.fail(err);
    }
    return this.nextAfterRefill();
  }

  private async nextAfterRefill(): Promise<IteratorResult<CapturePacket>> {
    try {
      for (;;) {
        if (this.parser.eof) {
          this.parser.finish();
          this.finished = true;
          await this.close();
          return DONE;
        }
        await this.refill();
        if (this.parser.next()) return this.result;
      }
    } catch (err) {
      return this.fail(err);
    }
  }

  private async fail(err: unknown): Promise<never> {
    this.finished = true;
    this.pending = false;
    await this.close();
    throw this.readError(err);
  }

  /** Called when a `for await` loop is left early. */
  async return(): Promise<IteratorResult<CapturePacket>> {
    this.finished = true;
    this.pending = false;
    await this.close();
    return DONE;
  }

  /**
   * Calls `fn` for every remaining packet (stop early by returning false) and resolves to the
   * number of packets it was called for. Faster than `for await`: one await per chunk, not per packet.
   */
  async forEach(fn: PacketCallback): Promise<number> {
    const parser = this.parser;
    const pkt = parser.packet;
    let n = 0;
    // An error thrown by fn is the caller's (a program fault, a full disk), not the capture's.
    let inCallback = false;
    try {
      if (this.pending) {
        this.pending = false;
        n += 1;
        inCallback = true;
        if (fn(pkt) === false) return n;
        inCallback = false;
      }
      while (!this.finished) {
        while (parser.next()) {
          n += 1;
          inCallback = true;
          if (fn(pkt) === false) return n;
          inCallback = false;
        }
        if (parser.eof) {
          parser.finish();
          break;
        }
        await this.refill();
      }
    } catch (err) {
      throw inCallback ? err : this.readError(err);
    } finally {
      this.finished = true;
      await this.close();
    }
    return n;
  }

  /** Closes the file (idempotent). */
  async close(): Promise<void> {
    const source = this.source;
    this.source = null;
    if (source !== null) await source.close();
  }
}

/**
 * Opens a pcap or pcapng capture for streaming. `source` is a path, "-" for standard input,
 * or a Readable. Resolves once the file header (and, for pcapng, the blocks before the first
 * packet) have been read; rejects with a CaptureError if the file is missing or not a capture.
 */
export async function openCapture(source: string | Readable, opts: OpenCaptureOptions = {}): Promise<CaptureReader> {
  let name: string;
  let byteSource: AsyncByteSource;
  if (typeof source === 'string' && source !== '-') {
    name = opts.name ?? source;
    let fh: FileHandle;
    try {
      fh = await openAsync(source, 'r');
    } catch (err) {
      throw new CaptureError(name, `cannot open: ${describeFsError(err)}`, { cause: err, exitCode: 2 });
    }
    byteSource = new FileHandleSource(fh);
  } else {
    const stream = source === '-' ? process.stdin : source as Readable;
    name = opts.name ?? (source === '-' ? 'stdin' : 'stream');
    byteSource = new ReadableSource(stream);
  }
  const reader = new CaptureReader(new CaptureParser(name, opts.chunkSize ?? DEFAULT_CHUNK_SIZE), byteSource);
  await reader.start();
  return reader;
}

// ---------------------------------------------------------------- synchronous

/** An open capture read with blocking reads. Iterate it once (for…of or forEach). */
export class CaptureReaderSync extends CaptureReaderBase implements IterableIterator<CapturePacket> {
  private fd: number;

  /** Use openCaptureSync(). */
  constructor(parser: CaptureParser, fd: number) {
    super(parser);
    this.fd = fd;
  }

  /** Reads up to the first packet so that format and interfaces are known. */
  start(): void {
    try {
      for (;;) {
        if (this.parser.next()) {
          this.pending = true;
          return;
        }
        if (this.parser.eof) {
          this.parser.finish();
          this.finished = true;
          this.close();
          return;
        }
        this.refill();
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  private refill(): void {
    if (this.fd < 0) throw new CaptureError(this.parser.name, 'read after close');
    const at = this.parser.prepareRead();
    let n: number;
    try {
      n = readSync(this.fd, this.parser.buf, at, this.parser.buf.length - at, null);
    } catch (err) {
      throw this.readError(err);
    }
    this.parser.commitRead(n);
  }

  [Symbol.iterator](): this {
    return this;
  }

  next(): IteratorResult<CapturePacket> {
    if (this.pending) {
      this.pending = false;
      return this.result;
    }
    try {
      while (!this.finished) {
        if (this.parser.next()) return this.result;
        if (this.parser.eof) {
          this.parser.finish();
          this.finished = true;
          this.close();
          break;
        }
        this.refill();
      }
    } catch (err) {
      this.finished = true;
      this.close();
      throw this.readError(err);
    }
    return DONE;
  }

  /** Called when a for…of loop is left early. */
  return(): IteratorResult<CapturePacket> {
    this.finished = true;
    this.pending = false;
    this.close();
    return DONE;
  }

  /**
   * Calls `fn` for every remaining packet (stop early by returning false); returns how many.
   * `beforeRefill` is called before each read that reuses the buffer packets' bytes lie in
   * (for a consumer that keeps referring to the bytes of past packets, e.g. a writer's appendRecords).
   */
  forEach(fn: PacketCallback, beforeRefill?: () => void): number {
    const parser = this.parser;
    const pkt = parser.packet;
    let n = 0;
    // An error thrown by fn is the caller's (a program fault, a full disk), not the capture's.
    let inCallback = false;
    try {
      if (this.pending) {
        this.pending = false;
        n += 1;
        inCallback = true;
        if (fn(pkt) === false) return n;
        inCallback = false;
      }
      while (!this.finished) {
        while (parser.next()) {
          n += 1;
          inCallback = true;
          if (fn(pkt) === false) return n;
          inCallback = false;
        }
        if (parser.eof) {
          parser.finish();
          break;
        }
        beforeRefill?.();
        this.refill();
      }
    } catch (err) {
      throw inCallback ? err : this.readError(err);
    } finally {
      this.finished = true;
      this.close();
    }
    return n;
  }

  close(): void {
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      closeSync(fd);
    }
  }
}

/** Opens a capture file for blocking, streaming reads (see openCapture for the errors). */
export function openCaptureSync(path: string, opts: OpenCaptureOptions = {}): CaptureReaderSync {
  const name = opts.name ?? path;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new CaptureError(name, `cannot open: ${describeFsError(err)}`, { cause: err, exitCode: 2 });
  }
  const reader = new CaptureReaderSync(new CaptureParser(name, opts.chunkSize ?? DEFAULT_CHUNK_SIZE), fd);
  reader.start();
  return reader;
}

/**
 * Reads a whole capture synchronously, calling `fn` for each packet (the packet object and its
 * bytes are reused: clone() what you keep). Returns the reader's description and the count.
 */
export function forEachPacket(path: string, fn: PacketCallback, opts: OpenCaptureOptions = {}): { info: CaptureInfo; packets: number } {
  const reader = openCaptureSync(path, opts);
  const packets = reader.forEach(fn);
  return { info: reader, packets };
}

/** Reads every packet of a (small) capture into memory, each one cloned. For tests and tools, not for big files. */
export async function readAllPackets(source: string | Readable, opts: OpenCaptureOptions = {}): Promise<{ info: CaptureInfo; packets: CapturePacket[] }> {
  const reader = await openCapture(source, opts);
  const packets: CapturePacket[] = [];
  await reader.forEach((p) => { packets.push(p.clone()); });
  return { info: reader, packets };
}
