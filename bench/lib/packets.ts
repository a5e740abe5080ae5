/**
 * The few IPv4 frames the per-packet cost measurements run programs on, with correct IPv4,
 * TCP, UDP and ICMP checksums (so a program that checks or updates them sees real values).
 * Addresses are from 198.18.0.0/15.
 */

const SRC_MAC = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const DST_MAC = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const SRC_IP = [198, 18, 0, 1];
const DST_IP = [198, 18, 0, 2];

/** One's complement sum of 16-bit big-endian words (odd tail padded with zero), folded, not complemented. */
export function onesComplementSum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if ((end - start) % 2 === 1) sum += bytes[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

export function checksum(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  return ~onesComplementSum(bytes, start, end, initial) & 0xffff;
}

function ipv4Frame(protocol: number, l4: Uint8Array, ttl: number): Uint8Array {
  const frame = new Uint8Array(14 + 20 + l4.length);
  frame.set(DST_MAC, 0);
  frame.set(SRC_MAC, 6);
  frame[12] = 0x08;
  frame[13] = 0x00;
  const ip = 14;
  const total = 20 + l4.length;
  frame.set([0x45, 0, total >> 8, total & 0xff, 0x12, 0x34, 0x40, 0, ttl, protocol, 0, 0, ...SRC_IP, ...DST_IP], ip);
  const ipSum = checksum(frame, ip, ip + 20);
  frame[ip + 10] = ipSum >> 8;
  frame[ip + 11] = ipSum & 0xff;
  frame.set(l4, ip + 20);
  return frame;
}

/** Sum of the TCP/UDP pseudo-header (addresses, protocol, length). */
function pseudoHeaderSum(protocol: number, length: number): number {
  const p = new Uint8Array([...SRC_IP, ...DST_IP, 0, protocol, length >> 8, length & 0xff]);
  return onesComplementSum(p);
}

function setL4Checksum(frame: Uint8Array, protocol: number, at: number): Uint8Array {
  const l4 = 34;
  const initial = protocol === 1 ? 0 : pseudoHeaderSum(protocol, frame.length - l4);
  let sum = checksum(frame, l4, frame.length, initial);
  if (protocol === 17 && sum === 0) sum = 0xffff;
  frame[l4 + at] = sum >> 8;
  frame[l4 + at + 1] = sum & 0xff;
  return frame;
}

export interface TcpOptions {
  srcPort?: number;
  dstPort?: number;
  /** TCP flag bits (ACK = 0x10, PSH = 0x08, SYN = 0x02 …). */
  flags?: number;
  payload?: number;
  ttl?: number;
}

/** An IPv4 TCP segment; by default a bare 54-byte ACK to port 5201. */
export function tcpFrame(o: TcpOptions = {}): Uint8Array {
  const l4 = new Uint8Array(20 + (o.payload ?? 0));
  const sport = o.srcPort ?? 40000;
  const dport = o.dstPort ?? 5201;
  l4.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, 0, 0, 0x10, 0, 0, 0, 0x20, 0, 0x50, o.flags ?? 0x10, 0xff, 0xff], 0);
  for (let i = 20; i < l4.length; i++) l4[i] = i & 0xff;
  return setL4Checksum(ipv4Frame(6, l4, o.ttl ?? 64), 6, 16);
}

/** An IPv4 UDP datagram to port 5201 with an 18-byte payload (60 bytes). */
export function udpFrame(): Uint8Array {
  const l4 = new Uint8Array(8 + 18);
  l4.set([0x9c, 0x40, 0x14, 0x51, 0, l4.length], 0);
  for (let i = 8; i < l4.length; i++) l4[i] = i;
  return setL4Checksum(ipv4Frame(17, l4, 64), 17, 6);
}

/** An ICMP echo (type 0 reply, 8 request) with a 56-byte payload, as ping sends (98 bytes). */
export function icmpEchoFrame(type: 0 | 8, ttl = 64): Uint8Array {
  const l4 = new Uint8Array(8 + 56);
  l4.set([type, 0, 0, 0, 0x12, 0x34, 0, 1], 0);
  for (let i = 8; i < l4.length; i++) l4[i] = i;
  return setL4Checksum(ipv4Frame(1, l4, ttl), 1, 2);
}
