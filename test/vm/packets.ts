/** Test packets and checksums computed from scratch (the reference for the checksum helpers). */

/** Ethernet + IPv4 (20 bytes, valid checksum) + optionally UDP (8 bytes, valid checksum) + 8 bytes of payload. */
export function ipv4Packet(opts: { ttl?: number; udp?: boolean } = {}): Uint8Array {
  const p = new Uint8Array(14 + 20 + 8 + 8);
  p.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
  const ip = [0x45, 0, 0, 36, 0x12, 0x34, 0x40, 0, opts.ttl ?? 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2];
  p.set(ip, 14);
  const ck = onesSum(p.subarray(14, 34));
  p[24] = (~ck >> 8) & 0xff;
  p[25] = ~ck & 0xff;
  p.set([0x30, 0x39, 0x00, 0x35, 0, 16, 0, 0], 34);
  p.set([1, 2, 3, 4, 5, 6, 7, 8], 42);
  if (opts.udp !== false) {
    const u = ~udpSum(p) & 0xffff;
    p[40] = u >> 8;
    p[41] = u & 0xff;
  }
  return p;
}

/** One's-complement sum of big-endian 16-bit words, folded. */
export function onesSum(bytes: Uint8Array, init = 0): number {
  let s = init;
  for (let i = 0; i < bytes.length; i += 2) s += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

function udpSum(p: Uint8Array): number {
  const udpLen = (p[38]! << 8) | p[39]!;
  const pseudo = new Uint8Array(12);
  pseudo.set(p.subarray(26, 34));
  pseudo[9] = 17;
  pseudo[10] = udpLen >> 8;
  pseudo[11] = udpLen & 0xff;
  return onesSum(p.subarray(34, 34 + udpLen), onesSum(pseudo));
}

export function ipv4HeaderValid(p: Uint8Array): boolean {
  return onesSum(p.subarray(14, 34)) === 0xffff;
}

export function udpChecksumValid(p: Uint8Array): boolean {
  return udpSum(p) === 0xffff;
}

/**
 * bpf_csum_diff from scratch: seed plus the `to` words minus the `from` words, in one's
 * complement on 32-bit little-endian words, folded to 16 bits (kernels since 6.12).
 */
export function csumDiffReference(from: number[], to: number[], seed: number): number {
  const m = 0xffffffffn;
  let t = BigInt(seed >>> 0);
  for (const w of to) t += BigInt(w >>> 0);
  for (const w of from) t += m - BigInt(w >>> 0);
  const r32 = t === 0n ? 0n : ((t - 1n) % m) + 1n;
  let r = Number(r32);
  r = (r & 0xffff) + (r >>> 16);
  r = (r & 0xffff) + (r >>> 16);
  return r;
}
