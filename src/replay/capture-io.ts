/**
 * What both replays (compiled rules, and a program from an object) share around the packet
 * loop: the output's format and writer, which frames a tc hook can see, byte comparison.
 */
import { realpathSync } from 'node:fs';
import { checkLinkType, createPcapngWriter, createPcapWriter, LINKTYPE_ETHERNET, toEthernet, type CapturePacket, type CaptureReaderSync, type CaptureWriter } from '../pcap/index.js';

export type CaptureFileFormat = 'pcap' | 'pcapng';

/** The format a file name asks for. */
export function formatForPath(path: string): CaptureFileFormat {
  return /\.(pcapng|ntar)$/i.test(path) ? 'pcapng' : 'pcap';
}

/** An Ethernet writer for the replay's output, keeping the input's timestamp resolution and interface name. */
export function openReplayWriter(reader: CaptureReaderSync, output: string, format: CaptureFileFormat): CaptureWriter {
  const nanosecond = reader.nanosecond;
  return format === 'pcapng'
    ? createPcapngWriter(output, { interfaces: [{ linkType: LINKTYPE_ETHERNET, tsresol: nanosecond ? 9 : 6, ...(reader.interfaces[0]?.name ? { name: reader.interfaces[0].name } : {}) }] })
    : createPcapWriter(output, { linkType: LINKTYPE_ETHERNET, nanosecond });
}

/** Whether BPF_PROG_TEST_RUN could hand this frame to a tc program (an untagged IP frame needs its fixed IP header). */
export function tcCanSee(b: Uint8Array, off: number, len: number): boolean {
  const type = (b[off + 12]! << 8) | b[off + 13]!;
  if (type === 0x0800) return len >= 34;
  if (type === 0x86dd) return len >= 54;
  return true;
}

export function sameBytes(a: Uint8Array, aOff: number, n: number, b: Uint8Array, bOff: number, bLen: number): boolean {
  if (n !== bLen) return false;
  // Four bytes a step through views made once per buffer (the loop passes the same two buffers each packet).
  if (a !== viewedA) { viewedA = a; viewA = new DataView(a.buffer, a.byteOffset, a.byteLength); }
  if (b !== viewedB) { viewedB = b; viewB = new DataView(b.buffer, b.byteOffset, b.byteLength); }
  const va = viewA!, vb = viewB!;
  let i = 0;
  for (; i + 4 <= n; i += 4) if (va.getInt32(aOff + i) !== vb.getInt32(bOff + i)) return false;
  for (; i < n; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

let viewedA: Uint8Array | undefined, viewA: DataView | undefined;
let viewedB: Uint8Array | undefined, viewB: DataView | undefined;

export function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/**
 * Each packet of a capture as an Ethernet frame: bytes[offset, offset + length) is the reader's
 * own buffer for Ethernet captures, or a conversion into a reused scratch buffer for the link
 * types toEthernet handles. Link types are checked once per change, with the file's name.
 */
export class EthernetFrames {
  bytes: Uint8Array = new Uint8Array(0);
  offset = 0;
  length = 0;
  private checked = -1;
  private readonly scratch = new Uint8Array(65536 + 64);

  constructor(private readonly file: string) {}

  /** Points bytes/offset/length at `pkt`'s frame; throws for an unsupported link type. */
  of(pkt: CapturePacket): this {
    if (pkt.linkType !== this.checked) {
      checkLinkType(pkt.linkType, this.file);
      this.checked = pkt.linkType;
    }
    if (pkt.linkType === LINKTYPE_ETHERNET) {
      this.bytes = pkt.bytes;
      this.offset = pkt.offset;
      this.length = pkt.caplen;
    } else {
      const converted = toEthernet(pkt.bytes.subarray(pkt.offset, pkt.offset + pkt.caplen), pkt.linkType, this.scratch, this.file);
      this.bytes = converted;
      this.offset = 0;
      this.length = converted.length;
    }
    return this;
  }
}
