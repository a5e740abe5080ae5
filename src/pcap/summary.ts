/** A `capinfos`-like summary of a capture: what the CLI's info output and the tests need. */
import type { Readable } from 'node:stream';
import { linkTypeName } from './linktype.js';
import type { ByteOrder, CaptureFormat, CaptureInterface } from './packet.js';
import { openCapture, type OpenCaptureOptions } from './reader.js';

export interface CaptureTime {
  sec: number;
  nsec: number;
}

export interface CaptureSummary {
  name: string;
  format: CaptureFormat;
  byteOrder: ByteOrder;
  nanosecond: boolean;
  interfaces: CaptureInterface[];
  /** Distinct link types of the interfaces, in order of appearance. */
  linkTypes: number[];
  packets: number;
  /** Sum of captured lengths, and of lengths on the wire. */
  capturedBytes: number;
  wireBytes: number;
  /** Timestamp of the first and of the last packet in file order (undefined if there are none). */
  first: CaptureTime | undefined;
  last: CaptureTime | undefined;
  /** Earliest and latest timestamp (they differ from first/last when the file is out of order). */
  earliest: CaptureTime | undefined;
  latest: CaptureTime | undefined;
  /** Packets carrying a pcapng comment, and section comments. */
  packetComments: number;
  sectionComments: string[];
}

function before(a: CaptureTime, sec: number, nsec: number): boolean {
  return sec < a.sec || (sec === a.sec && nsec < a.nsec);
}

function after(a: CaptureTime, sec: number, nsec: number): boolean {
  return sec > a.sec || (sec === a.sec && nsec > a.nsec);
}

/** Reads the whole capture once (streaming) and summarizes it. Throws what the reader throws. */
export async function summarizeCapture(source: string | Readable, opts: OpenCaptureOptions = {}): Promise<CaptureSummary> {
  const reader = await openCapture(source, opts);
  let capturedBytes = 0;
  let wireBytes = 0;
  let packetComments = 0;
  let first: CaptureTime | undefined;
  let last: CaptureTime | undefined;
  let earliest: CaptureTime | undefined;
  let latest: CaptureTime | undefined;
  const packets = await reader.forEach((p) => {
    capturedBytes += p.caplen;
    wireBytes += p.origLen;
    if (p.comment !== undefined) packetComments += 1;
    if (first === undefined) {
      first = { sec: p.tsSec, nsec: p.tsNsec };
      last = { sec: p.tsSec, nsec: p.tsNsec };
      earliest = { sec: p.tsSec, nsec: p.tsNsec };
      latest = { sec: p.tsSec, nsec: p.tsNsec };
      return;
    }
    last!.sec = p.tsSec;
    last!.nsec = p.tsNsec;
    if (before(earliest!, p.tsSec, p.tsNsec)) { earliest!.sec = p.tsSec; earliest!.nsec = p.tsNsec; }
    if (after(latest!, p.tsSec, p.tsNsec)) {
      latest!.sec = p.tsSec;
      latest!.nsec = p.tsNsec;
    }
  });
  const interfaces = reader.interfaces.map((i) => ({ ...i }));
  const linkTypes: number[] = [];
  for (const i of interfaces) if (!linkTypes.includes(i.linkType)) linkTypes.push(i.linkType);
  return {
    name: reader.name,
    format: reader.format,
    byteOrder: reader.byteOrder,
    nanosecond: reader.nanosecond,
    interfaces,
    linkTypes,
    packets,
    capturedBytes,
    wireBytes,
    first,
    last,
    earliest,
    latest,
    packetComments,
    sectionComments: [...reader.sectionComments],
  };
}

/** "1700000000.123456789" (9 digits with nanosecond files, 6 otherwise). */
export function formatCaptureTime(t: CaptureTime, nanosecond: boolean): string {
  const frac = nanosecond ? String(t.nsec).padStart(9, '0') : String(Math.floor(t.nsec / 1000)).padStart(6, '0');
  return `${t.sec}.${frac}`;
}

/** The summary as the lines a CLI prints. */
export function formatCaptureSummary(s: CaptureSummary): string {
  const lines = [
    `file:        ${s.name}`,
    `format:      ${s.format} (${s.byteOrder}-endian, ${s.nanosecond ? 'nanosecond' : 'microsecond'} timestamps)`,
    `link type:   ${s.linkTypes.length === 0 ? 'none' : s.linkTypes.map(linkTypeName).join(', ')}`,
    `interfaces:  ${s.interfaces.length}`,
    `packets:     ${s.packets}`,
    `bytes:       ${s.capturedBytes} captured, ${s.wireBytes} on the wire`,
  ];
  if (s.first !== undefined && s.last !== undefined) {
    lines.push(`first:       ${formatCaptureTime(s.first, s.nanosecond)}`);
    lines.push(`last:        ${formatCaptureTime(s.last, s.nanosecond)}`);
  }
  if (s.packetComments > 0 || s.sectionComments.length > 0) {
    lines.push(`comments:    ${s.packetComments} on packets, ${s.sectionComments.length} on sections`);
  }
  return lines.join('\n');
}
