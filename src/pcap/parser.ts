/**
 * The record parser shared by the synchronous and the asynchronous readers. It owns one read
 * buffer and walks pcap records or pcapng blocks in it; when the next record is not complete it
 * returns false and says how many bytes it needs, the driver compacts and refills the buffer
 * (`prepareRead` / `commitRead`) and asks again. At end of input `finish()` turns a half record
 * into a "truncated" error. Nothing is allocated per packet: one CapturePacket is refilled.
 *
 * Formats: https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/ and
 * https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/
 */
import { CaptureError } from './capture-error.js';
import { CapturePacket, type ByteOrder, type CaptureFormat, type CaptureInterface } from './packet.js';
import { MICROSECONDS, NANOSECONDS, setTimestampFromUnits, timestampResolution, type TimestampResolution } from './timestamp.js';

/** Default read size: large enough that the per-read cost vanishes, small enough to stay in cache-friendly territory. */
export const DEFAULT_CHUNK_SIZE = 1 << 20;
/** No record or block is believed to be larger than this; a bigger length means a corrupt file. */
export const MAX_RECORD_BYTES = 64 << 20;
/** libpcap's largest snapshot length; captured lengths up to this are accepted whatever the header's snaplen. */
const PCAP_MAX_SNAPLEN = 262144;

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_MAGIC_MODIFIED = 0xa1b2cd34;
const PCAPNG_SHB = 0x0a0d0d0a;
const PCAPNG_BOM = 0x1a2b3c4d;

export const BLOCK_SHB = PCAPNG_SHB;
export const BLOCK_IDB = 1;
export const BLOCK_PB = 2;
export const BLOCK_SPB = 3;
export const BLOCK_EPB = 6;

const OPT_ENDOFOPT = 0;
const OPT_COMMENT = 1;
const IF_NAME = 2;
const IF_DESCRIPTION = 3;
const IF_TSRESOL = 9;
const IF_TSOFFSET = 14;

function blockName(type: number): string {
  switch (type) {
    case PCAPNG_SHB: return 'section header block';
    case BLOCK_IDB: return 'interface description block';
    case BLOCK_PB: return 'packet block';
    case BLOCK_SPB: return 'simple packet block';
    case BLOCK_EPB: return 'enhanced packet block';
    default: return `block of type 0x${type.toString(16)}`;
  }
}

/** Smallest legal total length of each block type we interpret. */
function minBlockLength(type: number): number {
  switch (type) {
    case PCAPNG_SHB: return 28;
    case BLOCK_IDB: return 20;
    case BLOCK_PB: return 32;
    case BLOCK_SPB: return 16;
    case BLOCK_EPB: return 32;
    default: return 12;
  }
}

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

export class CaptureParser {
  readonly name: string;
  /** The read buffer; bytes [pos, end) are unparsed input, buf[0] is file byte `base`. */
  buf: Buffer;
  private view: DataView;
  pos = 0;
  end = 0;
  base = 0;
  eof = false;

  format: CaptureFormat | undefined = undefined;
  /** Byte order of the current pcap file or pcapng section. */
  le = true;
  /** Byte order of the file header / first section. */
  byteOrder: ByteOrder = 'little';
  /** pcap: nanosecond magic. pcapng: the first interface's resolution is finer than 1 µs. */
  nanosecond = false;
  readonly interfaces: CaptureInterface[] = [];
  readonly sectionComments: string[] = [];

  private readonly resolutions: TimestampResolution[] = [];
  /** Section-local interface id → index into `interfaces`. */
  private sectionInterfaces: number[] = [];
  private section = -1;
  private pcapNsPerUnit = 1000;
  private pcapMaxCaplen = PCAP_MAX_SNAPLEN;

  /** The one packet object every `next()` refills. */
  readonly packet = new CapturePacket();
  private count = 0;

  /** What `next()` was waiting for when it last returned false (needBytes 0: a clean boundary). */
  private needWhat = '';
  private needBytes = 0;

  constructor(name: string, chunkSize = DEFAULT_CHUNK_SIZE) {
    this.name = name;
    this.buf = Buffer.allocUnsafe(Math.max(64, chunkSize));
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** Packets parsed so far. */
  get packetCount(): number {
    return this.count;
  }

  /**
   * Makes room for more input: moves the unparsed tail to the front (which invalidates the
   * last packet's bytes) and grows the buffer if one record needs more than it holds. Returns
   * the offset to read into; read up to `buf.length - offset` bytes, then call commitRead(n).
   */
  prepareRead(): number {
    if (this.pos > 0) {
      if (this.end > this.pos) this.buf.copyWithin(0, this.pos, this.end);
      this.base += this.pos;
      this.end -= this.pos;
      this.pos = 0;
    }
    if (this.needBytes > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.needBytes, this.buf.length * 2));
      this.buf.copy(grown, 0, 0, this.end);
      this.buf = grown;
      this.view = new DataView(grown.buffer, grown.byteOffset, grown.byteLength);
    }
    return this.end;
  }

  commitRead(n: number): void {
    if (n === 0) this.eof = true;
    else this.end += n;
  }

  /** At end of input: throws if the input stopped inside a record. */
  finish(): void {
    if (this.format === undefined) {
      if (this.end === 0) {
        throw new CaptureError(this.name, 'empty file: not a pcap or pcapng file', { offset: 0, exitCode: 2 });
      }
    }
    if (this.needBytes > 0) {
      const left = this.end - this.pos;
      throw new CaptureError(this.name,
        `truncated ${this.needWhat} at byte ${this.base + this.pos} (needs ${this.needBytes} bytes, ${left} left)`,
        { offset: this.base + this.pos, hint: 'every packet before that point was read; the file was cut short (or is still being written)' });
    }
  }

  /** Fills `packet` with the next packet and returns true, or returns false when more input is needed (or the input ended). */
  next(): boolean {
    if (this.format === 'pcap') return this.nextPcap();
    if (this.format === 'pcapng') return this.nextPcapng();
    return this.readFileHeader() && this.next();
  }

  private wait(what: string, bytes: number): false {
    if (this.end === this.pos) {
      this.needBytes = 0;
    } else {
      this.needWhat = what;
      this.needBytes = bytes;
    }
    return false;
  }

  private corrupt(message: string, offset: number): CaptureError {
    return new CaptureError(this.name, `${message} at byte ${offset}`, {
      offset,
      hint: 'the file is corrupt from there on; every packet before it was read',
    });
  }

  // ---- format detection ----

  private readFileHeader(): boolean {
    const avail = this.end - this.pos;
    if (avail < 4) return this.waitHeader('file header', 4);
    const p = this.pos;
    const magicLe = this.view.getUint32(p, true);
    const magicBe = this.view.getUint32(p, false);
    if (magicLe === PCAPNG_SHB) {
      this.format = 'pcapng';
      return true;
    }
    for (const [magic, le] of [[magicLe, true], [magicBe, false]] as const) {
      if (magic === PCAP_MAGIC_US || magic === PCAP_MAGIC_NS) {
        if (avail < 24) return this.waitHeader('pcap file header', 24);
        this.le = le;
        this.byteOrder = le ? 'little' : 'big';
        this.nanosecond = magic === PCAP_MAGIC_NS;
        this.pcapNsPerUnit = this.nanosecond ? 1 : 1000;
        const major = this.view.getUint16(p + 4, le);
        const minor = this.view.getUint16(p + 6, le);
        if (major !== 2) {
          throw new CaptureError(this.name, `unsupported pcap version ${major}.${minor} (only 2.x exists)`, { offset: 4, exitCode: 2 });
        }
        const snaplen = this.view.getUint32(p + 16, le);
        // The upper bits hold FCS information (libpcap's LT_LINKTYPE mask).
        const linkType = this.view.getUint32(p + 20, le) & 0x03ffffff;
        this.pcapMaxCaplen = Math.min(Math.max(snaplen, PCAP_MAX_SNAPLEN), MAX_RECORD_BYTES);
        this.interfaces.push({ linkType, snaplen, tsresol: this.nanosecond ? 9 : 6 });
        this.resolutions.push(this.nanosecond ? NANOSECONDS : MICROSECONDS);
        this.packet.linkType = linkType;
        this.packet.interfaceId = 0;
        this.packet.comment = undefined;
        this.pos = p + 24;
        this.format = 'pcap';
        return true;
      }
      if (magic === PCAP_MAGIC_MODIFIED) {
        throw new CaptureError(this.name, 'modified ("Kuznetzov") pcap files are not supported', {
          offset: 0, exitCode: 2, hint: 'convert it first: editcap -F pcap IN OUT',
        });
      }
    }
    const first = this.buf.subarray(p, p + 4);
    let hint = 'netmangle reads pcap (tcpdump -w) and pcapng files';
    if (first[0] === 0x1f && first[1] === 0x8b) hint = 'the file is gzip-compressed: gunzip it first';
    else if (magicLe === 0xfd2fb528) hint = 'the file is zstd-compressed: unzstd it first';
    throw new CaptureError(this.name, `not a pcap or pcapng file (magic 0x${first.toString('hex')})`, { offset: 0, hint, exitCode: 2 });
  }

  private waitHeader(what: string, bytes: number): false {
    this.needWhat = what;
    this.needBytes = bytes;
    return false;
  }

  // ---- pcap ----

  private nextPcap(): boolean {
    const p = this.pos;
    const avail = this.end - p;
    if (avail < 16) return this.wait('packet record header', 16);
    const v = this.view;
    const le = this.le;
    const caplen = v.getUint32(p + 8, le);
    if (caplen > this.pcapMaxCaplen) {
      throw this.corrupt(`bad packet record: captured length ${caplen} is larger than the snapshot length ${this.interfaces[0]!.snaplen}`, this.base + p);
    }
    const total = 16 + caplen;
    if (avail < total) return this.wait('packet record', total);
    const pkt = this.packet;
    pkt.tsSec = v.getUint32(p, le);
    pkt.tsNsec = v.getUint32(p + 4, le) * this.pcapNsPerUnit;
    pkt.caplen = caplen;
    pkt.origLen = v.getUint32(p + 12, le);
    pkt.bytes = this.buf;
    pkt.offset = p + 16;
    pkt.fileOffset = this.base + p;
    pkt.index = this.count++;
    this.pos = p + total;
    return true;
  }

  // ---- pcapng ----

  private nextPcapng(): boolean {
    const v = this.view;
    for (;;) {
      const p = this.pos;
      const avail = this.end - p;
      if (avail < 12) return this.wait('block header', 12);
      const type = v.getUint32(p, this.le);
      if (type === PCAPNG_SHB) {
        // A new section may switch byte order: the byte-order magic decides how to read its length.
        const bom = v.getUint32(p + 8, true);
        if (bom === PCAPNG_BOM) this.le = true;
        else if (bom === 0x4d3c2b1a) this.le = false;
        else throw this.corrupt(`bad byte-order magic ${hex32(bom)} in section header block`, this.base + p);
      }
      const len = v.getUint32(p + 4, this.le);
      if (len < minBlockLength(type) || (len & 3) !== 0 || len > MAX_RECORD_BYTES) {
        throw this.corrupt(`bad block length ${len} in ${blockName(type)}`, this.base + p);
      }
      if (avail < len) return this.wait(blockName(type), len);
      const trailer = v.getUint32(p + len - 4, this.le);
      if (trailer !== len) {
        throw this.corrupt(`bad block length: ${blockName(type)} says ${len} bytes at its start and ${trailer} at its end`, this.base + p);
      }
      switch (type) {
        case BLOCK_EPB:
          this.readEnhancedPacket(p, len);
          this.pos = p + len;
          return true;
        case BLOCK_SPB:
          this.readSimplePacket(p, len);
          this.pos = p + len;
          return true;
        case BLOCK_PB:
          this.readObsoletePacket(p, len);
          this.pos = p + len;
          return true;
        case PCAPNG_SHB:
          this.readSectionHeader(p, len);
          break;
        case BLOCK_IDB:
          this.readInterface(p, len);
          break;
        default:
          break; // name resolution, statistics, decryption secrets, custom blocks: not needed to replay
      }
      this.pos = p + len;
    }
  }

  private globalInterface(localId: number, p: number, type: number): number {
    const id = this.sectionInterfaces[localId];
    if (id === undefined) {
      const n = this.sectionInterfaces.length;
      throw this.corrupt(`${blockName(type)} refers to interface ${localId} but its section describes ${n === 0 ? 'none' : `only ${n}`}`, this.base + p);
    }
    return id;
  }

  private readEnhancedPacket(p: number, len: number): void {
    const v = this.view;
    const le = this.le;
    const id = this.globalInterface(v.getUint32(p + 8, le), p, BLOCK_EPB);
    const caplen = v.getUint32(p + 20, le);
    if (caplen > len - 32) {
      throw this.corrupt(`bad enhanced packet block: captured length ${caplen} does not fit in its ${len}-byte block`, this.base + p);
    }
    const pkt = this.packet;
    setTimestampFromUnits(pkt, v.getUint32(p + 12, le), v.getUint32(p + 16, le), this.resolutions[id]!);
    pkt.caplen = caplen;
    pkt.origLen = v.getUint32(p + 24, le);
    pkt.bytes = this.buf;
    pkt.offset = p + 28;
    pkt.interfaceId = id;
    pkt.linkType = this.interfaces[id]!.linkType;
    pkt.fileOffset = this.base + p;
    pkt.index = this.count++;
    const optStart = p + 28 + ((caplen + 3) & ~3);
    pkt.comment = optStart < p + len - 4 ? this.readPacketComments(optStart, p + len - 4, p) : undefined;
  }

  private readObsoletePacket(p: number, len: number): void {
    const v = this.view;
    const le = this.le;
    const id = this.globalInterface(v.getUint16(p + 8, le), p, BLOCK_PB);
    const caplen = v.getUint32(p + 20, le);
    if (caplen > len - 32) {
      throw this.corrupt(`bad packet block: captured length ${caplen} does not fit in its ${len}-byte block`, this.base + p);
    }
    const pkt = this.packet;
    setTimestampFromUnits(pkt, v.getUint32(p + 12, le), v.getUint32(p + 16, le), this.resolutions[id]!);
    pkt.caplen = caplen;
    pkt.origLen = v.getUint32(p + 24, le);
    pkt.bytes = this.buf;
    pkt.offset = p + 28;
    pkt.interfaceId = id;
    pkt.linkType = this.interfaces[id]!.linkType;
    pkt.fileOffset = this.base + p;
    pkt.index = this.count++;
    const optStart = p + 28 + ((caplen + 3) & ~3);
    pkt.comment = optStart < p + len - 4 ? this.readPacketComments(optStart, p + len - 4, p) : undefined;
  }

  private readSimplePacket(p: number, len: number): void {
    const id = this.globalInterface(0, p, BLOCK_SPB);
    const origLen = this.view.getUint32(p + 8, this.le);
    const iface = this.interfaces[id]!;
    let caplen = Math.min(origLen, len - 16);
    if (iface.snaplen > 0 && caplen > iface.snaplen) caplen = iface.snaplen;
    const pkt = this.packet;
    // A simple packet block has no timestamp.
    pkt.tsSec = 0;
    pkt.tsNsec = 0;
    pkt.caplen = caplen;
    pkt.origLen = origLen;
    pkt.bytes = this.buf;
    pkt.offset = p + 12;
    pkt.interfaceId = id;
    pkt.linkType = iface.linkType;
    pkt.fileOffset = this.base + p;
    pkt.index = this.count++;
    pkt.comment = undefined;
  }

  /** Walks an options area, calling `each(code, valueOffset, valueLength)`; throws on an option that overruns it. */
  private forEachOption(start: number, end: number, blockOffset: number, type: number,
    each: (code: number, at: number, length: number) => void): void {
    const v = this.view;
    let o = start;
    while (o + 4 <= end) {
      const code = v.getUint16(o, this.le);
      const length = v.getUint16(o + 2, this.le);
      if (code === OPT_ENDOFOPT) return;
      if (o + 4 + length > end) {
        throw this.corrupt(`bad option ${code} of the ${blockName(type)} at byte ${blockOffset}: its ${length} bytes run past the end of the block`,
          this.base + o);
      }
      each(code, o + 4, length);
      o += 4 + ((length + 3) & ~3);
    }
  }

  private readPacketComments(start: number, end: number, p: number): string | undefined {
    let comment: string | undefined;
    this.forEachOption(start, end, this.base + p, BLOCK_EPB, (code, at, length) => {
      if (code !== OPT_COMMENT) return;
      const text = this.buf.toString('utf8', at, at + length);
      comment = comment === undefined ? text : `${comment}\n${text}`;
    });
    return comment;
  }

  private readSectionHeader(p: number, len: number): void {
    const major = this.view.getUint16(p + 12, this.le);
    const minor = this.view.getUint16(p + 14, this.le);
    if (major !== 1) {
      throw new CaptureError(this.name, `unsupported pcapng version ${major}.${minor} in the section header block at byte ${this.base + p}`,
        { offset: this.base + p, exitCode: 2 });
    }
    this.section += 1;
    if (this.section === 0) this.byteOrder = this.le ? 'little' : 'big';
    this.sectionInterfaces = [];
    this.forEachOption(p + 24, p + len - 4, this.base + p, PCAPNG_SHB, (code, at, length) => {
      if (code === OPT_COMMENT) this.sectionComments.push(this.buf.toString('utf8', at, at + length));
    });
  }

  private readInterface(p: number, len: number): void {
    if (this.section < 0) throw this.corrupt('interface description block before any section header', this.base + p);
    const v = this.view;
    const iface: CaptureInterface = {
      linkType: v.getUint16(p + 8, this.le),
      snaplen: v.getUint32(p + 12, this.le),
      tsresol: 6,
      section: this.section,
    };
    let tsOffset = 0;
    this.forEachOption(p + 16, p + len - 4, this.base + p, BLOCK_IDB, (code, at, length) => {
      switch (code) {
        case OPT_COMMENT:
          iface.comment = this.buf.toString('utf8', at, at + length);
          break;
        case IF_NAME:
          iface.name = this.buf.toString('utf8', at, at + length);
          break;
        case IF_DESCRIPTION:
          iface.description = this.buf.toString('utf8', at, at + length);
          break;
        case IF_TSRESOL:
          if (length >= 1) iface.tsresol = this.buf[at]!;
          break;
        case IF_TSOFFSET:
          if (length >= 8) {
            // Seconds as a signed 64-bit number; any sane value fits a double.
            tsOffset = Number(this.le ? this.buf.readBigInt64LE(at) : this.buf.readBigInt64BE(at));
          }
          break;
        default:
          break;
      }
    });
    if (tsOffset !== 0) iface.tsOffset = tsOffset;
    const n = iface.tsresol & 0x7f;
    if ((iface.tsresol & 0x80) === 0 ? n > 18 : n > 63) {
      throw this.corrupt(`bad if_tsresol 0x${iface.tsresol.toString(16)} in interface description block`, this.base + p);
    }
    if (this.interfaces.length === 0) {
      this.nanosecond = (iface.tsresol & 0x80) === 0 ? n > 6 : n > 19;
    }
    this.sectionInterfaces.push(this.interfaces.length);
    this.interfaces.push(iface);
    this.resolutions.push(timestampResolution(iface.tsresol, tsOffset));
  }
}
