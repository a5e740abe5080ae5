/** The packet and interface shapes shared by the readers and the writers. */

const EMPTY = new Uint8Array(0);

/**
 * One packet as a reader hands it out.
 *
 * Readers reuse ONE CapturePacket object for every packet and its bytes live in the reader's
 * read buffer: both are valid until the reader moves to the next packet. Call `clone()` to keep
 * a packet. (Reuse is what lets a reader run without allocating per packet; see bench/pcap-read.ts.)
 *
 * `data` creates a view on each access; hot loops can use `bytes`, `offset` and `caplen`
 * directly instead.
 */
export class CapturePacket {
  /** The buffer holding the packet's bytes, from `offset` for `caplen` bytes. */
  bytes: Uint8Array = EMPTY;
  offset = 0;
  /** Bytes captured (what `data` holds). */
  caplen = 0;
  /** Length of the packet on the wire (≥ caplen when the capture truncated it). */
  origLen = 0;
  /** Timestamp: whole seconds since the epoch … */
  tsSec = 0;
  /** … plus nanoseconds (0 to 999,999,999). Microsecond files give multiples of 1000. */
  tsNsec = 0;
  /** Index into the reader's `interfaces` (file-wide, also for multi-section pcapng). */
  interfaceId = 0;
  /** LINKTYPE_* of the packet's interface. */
  linkType = 1;
  /** pcapng opt_comment(s) of this packet, several joined by "\n"; undefined when none. */
  comment: string | undefined = undefined;
  /** 0-based number of the packet in the file. */
  index = 0;
  /** Byte offset of the packet's record (pcap) or block (pcapng) in the file. */
  fileOffset = 0;

  /** A view of the captured bytes (valid as long as the packet is). */
  get data(): Uint8Array {
    return this.bytes.subarray(this.offset, this.offset + this.caplen);
  }

  /** A copy that owns its bytes and is not touched by the reader again. */
  clone(): CapturePacket {
    const p = new CapturePacket();
    // A copy (Buffer#slice would share the reader's memory).
    p.bytes = new Uint8Array(this.caplen);
    p.bytes.set(this.bytes.subarray(this.offset, this.offset + this.caplen));
    p.offset = 0;
    p.caplen = this.caplen;
    p.origLen = this.origLen;
    p.tsSec = this.tsSec;
    p.tsNsec = this.tsNsec;
    p.interfaceId = this.interfaceId;
    p.linkType = this.linkType;
    p.comment = this.comment;
    p.index = this.index;
    p.fileOffset = this.fileOffset;
    return p;
  }
}

/** What a writer needs of a packet. A CapturePacket is one. */
export interface PacketLike {
  readonly data: Uint8Array;
  readonly tsSec: number;
  readonly tsNsec: number;
  /** Defaults to data.length; raised to data.length if smaller. */
  readonly origLen?: number;
  /** pcapng: which of the writer's interfaces (default 0). */
  readonly interfaceId?: number;
  /** pcapng: written as opt_comment. */
  readonly comment?: string;
}

/** An interface of a capture: the one of a pcap file, or a pcapng Interface Description Block. */
export interface CaptureInterface {
  /** LINKTYPE_* number. */
  linkType: number;
  /** Maximum bytes captured per packet; 0 means no limit (pcapng). */
  snaplen: number;
  /** Raw if_tsresol: 6 = microseconds, 9 = nanoseconds, 0x80 | n = 2^-n seconds. */
  tsresol: number;
  /** pcapng if_tsoffset in seconds (already added to packet timestamps by the reader). */
  tsOffset?: number;
  /** pcapng if_name, if_description, opt_comment. */
  name?: string;
  description?: string;
  comment?: string;
  /** pcapng: 0-based section the interface belongs to. */
  section?: number;
}

export type CaptureFormat = 'pcap' | 'pcapng';
export type ByteOrder = 'little' | 'big';
