/**
 * Classic pcap bytes written by hand, for tests that need a capture file without going through
 * netmangle's own writer: little-endian, microsecond timestamps, Ethernet link type.
 */

/** The 24-byte global header. */
export function pcapGlobalHeader(snaplen = 65535): Buffer {
  const head = Buffer.alloc(24);
  head.writeUInt32LE(0xa1b2c3d4, 0);
  head.writeUInt16LE(2, 4);
  head.writeUInt16LE(4, 6);
  head.writeUInt32LE(snaplen, 16);
  head.writeUInt32LE(1, 20);
  return head;
}

/** One record: its 16-byte header and the frame (`origLen`: the length before a snap-length cut). */
export function pcapRecord(frame: Uint8Array, tsSec = 0, tsUsec = 0, origLen = frame.length): Buffer {
  const rec = Buffer.alloc(16);
  rec.writeUInt32LE(tsSec, 0);
  rec.writeUInt32LE(tsUsec, 4);
  rec.writeUInt32LE(frame.length, 8);
  rec.writeUInt32LE(origLen, 12);
  return Buffer.concat([rec, frame]);
}
