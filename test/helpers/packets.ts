/**
 * Packets for tests, built byte by byte with every checksum computed from scratch, and a
 * reference model of what a compiled `set` must leave in a packet.
 *
 * The builder makes Ethernet frames with 0, 1 or 2 VLAN tags; IPv4 (options, fragments) or
 * IPv6 (hop-by-hop, routing, destination options, fragment headers); TCP, UDP, ICMP echo or
 * ICMPv6 echo; and can cut the frame at any byte. The reference (`expectedAfterSets`) writes
 * fields with the catalog's offset/shift/mask and then recomputes every checksum from scratch
 * over the whole datagram: it shares no code with the compiler's incremental updates, so the
 * two agreeing byte for byte is evidence, not tautology.
 *
 * The reference's view of which layers a packet has is the compiler's documented one
 * (src/compiler/codegen.ts): a layer is present when its whole fixed header is in the frame;
 * at most two VLAN tags and six IPv6 extension headers are walked; L4 is seen only in
 * unfragmented datagrams and first fragments.
 */
import type { FieldDef, Layer } from '../../src/rules/ast.js';

// ------------------------------------------------------------------ addresses

export function ipv4Bytes(text: string): Uint8Array {
  const parts = text.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`bad IPv4 address ${text}`);
  return Uint8Array.from(parts);
}

export function ipv6Bytes(text: string): Uint8Array {
  const [head, tail] = text.includes('::') ? text.split('::') as [string, string] : [text, undefined];
  const words = (s: string): number[] => (s === '' ? [] : s.split(':').map((w) => parseInt(w, 16)));
  const h = words(head);
  const t = tail === undefined ? [] : words(tail);
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  if (all.length !== 8 || all.some((w) => !(w >= 0 && w <= 0xffff))) throw new Error(`bad IPv6 address ${text}`);
  const out = new Uint8Array(16);
  all.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

export function macBytes(text: string): Uint8Array {
  const parts = text.split(':').map((p) => parseInt(p, 16));
  if (parts.length !== 6 || parts.some((p) => !(p >= 0 && p <= 255))) throw new Error(`bad MAC address ${text}`);
  return Uint8Array.from(parts);
}

// ------------------------------------------------------------------ checksums

/** The 16-bit one's complement sum (not complemented) of the byte strings, as if concatenated. */
export function onesSum(...parts: Uint8Array[]): number {
  let sum = 0;
  let odd: number | undefined;
  for (const p of parts) {
    for (let i = 0; i < p.length; i++) {
      if (odd === undefined) {
        odd = p[i]!;
      } else {
        sum += (odd << 8) | p[i]!;
        odd = undefined;
      }
    }
  }
  if (odd !== undefined) sum += odd << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** The Internet checksum of the byte strings (RFC 1071). */
export function internetChecksum(...parts: Uint8Array[]): number {
  return ~onesSum(...parts) & 0xffff;
}

function u16(v: number): Uint8Array {
  return Uint8Array.from([(v >> 8) & 0xff, v & 0xff]);
}

function u32(v: number): Uint8Array {
  return Uint8Array.from([(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff]);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const rd16 = (b: Uint8Array, off: number): number => (b[off]! << 8) | b[off + 1]!;
const wr16 = (b: Uint8Array, off: number, v: number): void => {
  b[off] = (v >> 8) & 0xff;
  b[off + 1] = v & 0xff;
};

// ------------------------------------------------------------------ packet specs

export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_8021Q = 0x8100;
export const ETH_P_8021AD = 0x88a8;

export interface VlanTag {
  /** 0x8100 (default) or 0x88a8. */
  tpid?: number;
  pcp?: number;
  dei?: number;
  vid: number;
}

export interface EthSpec {
  dst?: string;
  src?: string;
  vlans?: VlanTag[];
}

export interface Ipv4Spec {
  kind: 'ipv4';
  src?: string;
  dst?: string;
  tos?: number;
  id?: number;
  ttl?: number;
  rb?: boolean;
  df?: boolean;
  /** Options, padded with zeros (end of options) to a multiple of 4 bytes. */
  options?: Uint8Array;
  /**
   * Send one fragment of the datagram: the IP payload bytes [offset*8, offset*8 + length)
   * (to the end when length is absent), with MF as given. The L4 checksum stays the one of
   * the whole datagram, as a real sender computes it before fragmenting.
   */
  fragment?: { offset: number; more: boolean; length?: number };
  /** Overrides of computed fields, for malformed packets. */
  protoOverride?: number;
  ihlOverride?: number;
  versionOverride?: number;
}

export type Ipv6Ext =
  | { type: 'hop' | 'routing' | 'dest'; /** Length in 8-octet units beyond the first 8. */ len?: number }
  | { type: 'frag'; offset?: number; more?: boolean; id?: number };

export interface Ipv6Spec {
  kind: 'ipv6';
  src?: string;
  dst?: string;
  tclass?: number;
  flow?: number;
  hlim?: number;
  ext?: Ipv6Ext[];
  /**
   * With a fragment header: carry only these bytes of the fragmentable part (the L4
   * segment), [offset*8, offset*8 + length). Offset and M come from the fragment header.
   */
  fragmentLength?: number;
}

export type L4Spec =
  | {
    kind: 'tcp'; sport?: number; dport?: number; seq?: number; ack?: number;
    /** The 12 flag bits (FIN 0x001 … AE 0x100, reserved 0xe00). */
    flags?: number; window?: number; urgent?: number;
    /** TCP options, padded to a multiple of 4 bytes. */
    options?: Uint8Array; payload?: Uint8Array;
  }
  | { kind: 'udp'; sport?: number; dport?: number; payload?: Uint8Array; /** 'none': checksum field 0. */ checksum?: 'none' }
  | { kind: 'icmp'; type?: number; code?: number; ident?: number; seq?: number; payload?: Uint8Array }
  | { kind: 'icmpv6'; type?: number; code?: number; ident?: number; seq?: number; payload?: Uint8Array }
  | { kind: 'raw'; proto: number; bytes: Uint8Array };

export interface PacketSpec {
  eth?: EthSpec;
  l3?: Ipv4Spec | Ipv6Spec | { kind: 'raw'; ethertype: number; bytes: Uint8Array };
  l4?: L4Spec;
  /** Ethernet padding after the IP datagram (bytes of 0). */
  pad?: number;
  /** Cut the frame after this many bytes. */
  cut?: number;
}

/** A built packet: the frame as sent, and what the reference model needs beyond it. */
export interface BuiltPacket {
  spec: PacketSpec;
  /** The frame handed to the program (cut when `spec.cut` is set). */
  frame: Uint8Array;
  /** The whole frame before the cut. */
  whole: Uint8Array;
  /** L4 bytes of the datagram that other fragments carry (empty for unfragmented packets). */
  l4Before: Uint8Array;
  l4After: Uint8Array;
}

const PROTO: Record<Exclude<L4Spec['kind'], 'raw'>, number> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58 };
const EXT_CODE = { hop: 0, routing: 43, dest: 60, frag: 44 } as const;

/** The L4 segment (header with checksum 0, and payload) of a spec. */
function l4Segment(l4: L4Spec): { bytes: Uint8Array; proto: number; csumAt?: number; pseudo: boolean } {
  switch (l4.kind) {
    case 'tcp': {
      const opts = padTo4(l4.options ?? new Uint8Array(0));
      const hl = 20 + opts.length;
      const h = new Uint8Array(20);
      wr16(h, 0, l4.sport ?? 40000);
      wr16(h, 2, l4.dport ?? 5201);
      h.set(u32(l4.seq ?? 0x11223344), 4);
      h.set(u32(l4.ack ?? 0x55667788), 8);
      const flags = l4.flags ?? 0x010;
      wr16(h, 12, ((hl / 4) << 12) | (flags & 0xfff));
      wr16(h, 14, l4.window ?? 502);
      wr16(h, 18, l4.urgent ?? 0);
      return { bytes: concat(h, opts, l4.payload ?? new Uint8Array(0)), proto: 6, csumAt: 16, pseudo: true };
    }
    case 'udp': {
      const payload = l4.payload ?? Uint8Array.from([1, 2, 3, 4, 5]);
      const h = new Uint8Array(8);
      wr16(h, 0, l4.sport ?? 40000);
      wr16(h, 2, l4.dport ?? 53);
      wr16(h, 4, 8 + payload.length);
      return { bytes: concat(h, payload), proto: 17, csumAt: l4.checksum === 'none' ? undefined : 6, pseudo: true };
    }
    case 'icmp':
    case 'icmpv6': {
      const h = new Uint8Array(8);
      h[0] = l4.type ?? (l4.kind === 'icmp' ? 8 : 128);
      h[1] = l4.code ?? 0;
      wr16(h, 4, l4.ident ?? 0x1234);
      wr16(h, 6, l4.seq ?? 1);
      const payload = l4.payload ?? Uint8Array.from({ length: 16 }, (_, i) => 0x40 + i);
      return { bytes: concat(h, payload), proto: PROTO[l4.kind], csumAt: 2, pseudo: l4.kind === 'icmpv6' };
    }
    case 'raw':
      return { bytes: l4.bytes, proto: l4.proto, pseudo: false };
  }
}

function padTo4(b: Uint8Array): Uint8Array {
  return b.length % 4 === 0 ? b : concat(b, new Uint8Array(4 - (b.length % 4)));
}

/**
 * The length as one's complement arithmetic sees an integer: its value modulo 0xffff. A real
 * length always fits 16 bits, where this is the plain value; a rule can write lengths that
 * make the pseudo-header's negative or past 65535 (ip.len below the header, on a fragment),
 * and a receiver summing the integer length (as Linux does) sees this value.
 */
function lengthWord(length: number): Uint8Array {
  return u16(((length % 0xffff) + 0xffff) % 0xffff);
}

function pseudoV4(src: Uint8Array, dst: Uint8Array, proto: number, length: number): Uint8Array {
  return concat(src, dst, Uint8Array.from([0, proto]), lengthWord(length));
}

function pseudoV6(src: Uint8Array, dst: Uint8Array, proto: number, length: number): Uint8Array {
  return concat(src, dst, u16(0), lengthWord(length), Uint8Array.from([0, 0, 0, proto]));
}

/** Fills the L4 checksum of a whole segment given its pseudo-header (or none). */
function fillL4Checksum(seg: Uint8Array, csumAt: number | undefined, pseudo: Uint8Array | undefined, udp: boolean): void {
  if (csumAt === undefined) return;
  wr16(seg, csumAt, 0);
  let c = pseudo ? internetChecksum(pseudo, seg) : internetChecksum(seg);
  if (udp && c === 0) c = 0xffff;
  wr16(seg, csumAt, c);
}

export function buildPacket(spec: PacketSpec): BuiltPacket {
  const eth = spec.eth ?? {};
  const parts: Uint8Array[] = [macBytes(eth.dst ?? '02:00:00:00:00:02'), macBytes(eth.src ?? '02:00:00:00:00:01')];
  for (const tag of eth.vlans ?? []) {
    parts.push(u16(tag.tpid ?? ETH_P_8021Q), u16(((tag.pcp ?? 0) << 13) | ((tag.dei ?? 0) << 12) | (tag.vid & 0xfff)));
  }
  let l4Before: Uint8Array = new Uint8Array(0);
  let l4After: Uint8Array = new Uint8Array(0);
  const l3 = spec.l3;
  if (!l3) {
    parts.push(u16(0x88b5), new Uint8Array(46)); // local experimental ethertype, zero payload
  } else if (l3.kind === 'raw') {
    parts.push(u16(l3.ethertype), l3.bytes);
  } else {
    const seg = spec.l4 ? l4Segment(spec.l4) : { bytes: new Uint8Array(0), proto: 59, pseudo: false, csumAt: undefined };
    const segBytes = seg.bytes;
    const isUdp = spec.l4?.kind === 'udp';
    if (l3.kind === 'ipv4') {
      const src = ipv4Bytes(l3.src ?? '198.18.0.1');
      const dst = ipv4Bytes(l3.dst ?? '198.18.0.2');
      fillL4Checksum(segBytes, seg.csumAt, seg.pseudo ? pseudoV4(src, dst, seg.proto, segBytes.length) : undefined, isUdp);
      let payload = segBytes;
      let fragField = 0;
      if (l3.fragment) {
        const start = l3.fragment.offset * 8;
        const end = l3.fragment.length === undefined ? segBytes.length : start + l3.fragment.length;
        payload = segBytes.slice(start, end);
        l4Before = segBytes.slice(0, start);
        l4After = segBytes.slice(end);
        fragField = (l3.fragment.more ? 0x2000 : 0) | (l3.fragment.offset & 0x1fff);
      }
      const opts = padTo4(l3.options ?? new Uint8Array(0));
      const h = new Uint8Array(20 + opts.length);
      h[0] = ((l3.versionOverride ?? 4) << 4) | (l3.ihlOverride ?? h.length / 4);
      h[1] = l3.tos ?? 0;
      wr16(h, 2, h.length + payload.length);
      wr16(h, 4, l3.id ?? 0x4d2);
      wr16(h, 6, (l3.rb ? 0x8000 : 0) | (l3.df ? 0x4000 : 0) | fragField);
      h[8] = l3.ttl ?? 64;
      h[9] = l3.protoOverride ?? seg.proto;
      h.set(src, 12);
      h.set(dst, 16);
      h.set(opts, 20);
      wr16(h, 10, internetChecksum(h));
      parts.push(u16(ETH_P_IP), h, payload);
    } else {
      const src = ipv6Bytes(l3.src ?? '2001:db8::1');
      const dst = ipv6Bytes(l3.dst ?? '2001:db8::2');
      fillL4Checksum(segBytes, seg.csumAt, seg.pseudo ? pseudoV6(src, dst, seg.proto, segBytes.length) : undefined, isUdp);
      const exts = l3.ext ?? [];
      const codes = exts.map((e) => EXT_CODE[e.type]);
      const extBytes: Uint8Array[] = [];
      let payload = segBytes;
      exts.forEach((e, i) => {
        const nxt = i + 1 < exts.length ? codes[i + 1]! : seg.proto;
        if (e.type === 'frag') {
          const b = new Uint8Array(8);
          b[0] = nxt;
          wr16(b, 2, ((e.offset ?? 0) << 3) | (e.more ? 1 : 0));
          b.set(u32(e.id ?? 0xabcd), 4);
          extBytes.push(b);
          const start = (e.offset ?? 0) * 8;
          const end = l3.fragmentLength === undefined ? segBytes.length : start + l3.fragmentLength;
          payload = segBytes.slice(start, end);
          l4Before = segBytes.slice(0, start);
          l4After = segBytes.slice(end);
        } else {
          const len = e.len ?? 0;
          const b = new Uint8Array(8 + 8 * len);
          b[0] = nxt;
          b[1] = len;
          if (e.type === 'routing') {
            b[2] = 0; // routing type 0 … segments left 0: ignored by receivers
          } else {
            b[2] = 1; // PadN option covering the rest
            b[3] = b.length - 4;
          }
          extBytes.push(b);
        }
      });
      const h = new Uint8Array(40);
      h.set(u32((6 << 28) | ((l3.tclass ?? 0) << 20) | ((l3.flow ?? 0x12345) & 0xfffff)), 0);
      const extLen = extBytes.reduce((n, b) => n + b.length, 0);
      wr16(h, 4, extLen + payload.length);
      h[6] = codes[0] ?? seg.proto;
      h[7] = l3.hlim ?? 64;
      h.set(src, 8);
      h.set(dst, 24);
      parts.push(u16(ETH_P_IPV6), h, ...extBytes, payload);
    }
  }
  if (spec.pad) parts.push(new Uint8Array(spec.pad));
  const whole = concat(...parts);
  const frame = spec.cut === undefined ? whole : whole.slice(0, spec.cut);
  return { spec, frame, whole, l4Before, l4After };
}

// ------------------------------------------------------------------ decoding (the compiler's view)

export type L4Kind = 'tcp' | 'udp' | 'icmp' | 'icmpv6';

export interface Decoded {
  /** Start of each present layer's header in the frame. */
  layers: Partial<Record<Layer, number>>;
  /** The L4 protocol the L3 header names, when L4 is visible (even if its header is cut). */
  l4Proto?: number;
  /** Where the L4 header would start (visible datagrams only). */
  l4Offset?: number;
  /** End of the IP datagram per its length field (may lie beyond the frame). */
  l3End?: number;
  /** Bytes of IPv6 extension headers, or of the IPv4 header. */
  l3HeaderLen?: number;
  /** IPv4: fragment offset or MF set; IPv6: a fragment header seen. */
  fragment?: { offset: number; more: boolean };
}

const L4_HEADER: Record<L4Kind, number> = { tcp: 20, udp: 8, icmp: 8, icmpv6: 8 };
/** How far the compiler walks: two VLAN tags, six IPv6 extension headers. */
export const MAX_VLAN_TAGS = 2;
export const MAX_IPV6_EXT = 6;

/** Which layers the compiled program sees in this frame, and where they start. */
export function decode(frame: Uint8Array): Decoded {
  const out: Decoded = { layers: {} };
  if (frame.length < 14) return out;
  out.layers.eth = 0;
  let type = rd16(frame, 12);
  let l3 = 14;
  for (let tag = 0; tag < MAX_VLAN_TAGS && (type === ETH_P_8021Q || type === ETH_P_8021AD); tag++) {
    if (frame.length < l3 + 4) return out;
    if (tag === 0) out.layers.vlan = 14;
    type = rd16(frame, l3 + 2);
    l3 += 4;
  }
  if (type === ETH_P_IP) {
    if (frame.length < l3 + 20 || frame[l3]! >> 4 !== 4 || (frame[l3]! & 0xf) < 5) return out;
    out.layers.ip = l3;
    const hl = (frame[l3]! & 0xf) * 4;
    out.l3HeaderLen = hl;
    out.l3End = l3 + rd16(frame, l3 + 2);
    const frag = rd16(frame, l3 + 6);
    if (frag & 0x3fff) out.fragment = { offset: frag & 0x1fff, more: (frag & 0x2000) !== 0 };
    if ((frag & 0x1fff) !== 0) return out;
    const proto = frame[l3 + 9]!;
    const kind: L4Kind | undefined = proto === 6 ? 'tcp' : proto === 17 ? 'udp' : proto === 1 ? 'icmp' : undefined;
    if (!kind) return out;
    out.l4Proto = proto;
    out.l4Offset = l3 + hl;
    if (frame.length >= l3 + hl + L4_HEADER[kind]) out.layers[kind] = l3 + hl;
    return out;
  }
  if (type === ETH_P_IPV6) {
    if (frame.length < l3 + 40 || frame[l3]! >> 4 !== 6) return out;
    out.layers.ipv6 = l3;
    out.l3End = l3 + 40 + rd16(frame, l3 + 4);
    let nxt = frame[l3 + 6]!;
    let at = l3 + 40;
    for (let i = 0; i < MAX_IPV6_EXT; i++) {
      if (nxt !== 0 && nxt !== 43 && nxt !== 60 && nxt !== 44 && nxt !== 51) break;
      if (frame.length < at + 8) return out;
      if (nxt === 44) {
        const fo = rd16(frame, at + 2);
        out.fragment = { offset: fo >> 3, more: (fo & 1) !== 0 };
        if (fo >> 3 !== 0) return out;
        nxt = frame[at]!;
        at += 8;
      } else if (nxt === 51) {
        const len = (frame[at + 1]! + 2) * 4;
        nxt = frame[at]!;
        at += len;
      } else {
        const len = (frame[at + 1]! + 1) * 8;
        nxt = frame[at]!;
        at += len;
      }
    }
    out.l3HeaderLen = at - l3;
    const kind: L4Kind | undefined = nxt === 6 ? 'tcp' : nxt === 17 ? 'udp' : nxt === 58 ? 'icmpv6' : undefined;
    if (!kind) return out;
    out.l4Proto = nxt;
    out.l4Offset = at;
    if (frame.length >= at + L4_HEADER[kind]) out.layers[kind] = at;
  }
  return out;
}

// ------------------------------------------------------------------ checksum verification

export interface ChecksumReport {
  /** IPv4 header checksum right (undefined: no IPv4 header in full view). */
  ipv4?: boolean;
  /** L4 checksum right; 'none' for UDP with checksum 0; undefined when it cannot be judged. */
  l4?: boolean | 'none';
}

/**
 * Which checksums of a frame are right, computed from scratch. For a fragment, pass the L4
 * bytes other fragments carry (`BuiltPacket.l4Before/l4After`), or the L4 verdict is undefined.
 */
export function checksumsValid(frame: Uint8Array, rest?: { before: Uint8Array; after: Uint8Array }): ChecksumReport {
  const d = decode(frame);
  const out: ChecksumReport = {};
  const ip = d.layers.ip;
  if (ip !== undefined && d.l3HeaderLen !== undefined && frame.length >= ip + d.l3HeaderLen) {
    out.ipv4 = onesSum(frame.subarray(ip, ip + d.l3HeaderLen)) === 0xffff;
  }
  const seg = l4Whole(frame, d, rest);
  if (seg) {
    const { kind, bytes, pseudo } = seg;
    const csumAt = kind === 'tcp' ? 16 : kind === 'udp' ? 6 : 2;
    if (kind === 'udp' && rd16(bytes, 6) === 0) out.l4 = 'none';
    else out.l4 = onesSum(...(pseudo ? [pseudo] : []), bytes) === 0xffff;
    void csumAt;
  }
  return out;
}

/** The whole L4 segment of the frame's datagram with its pseudo-header, when it can be assembled. */
function l4Whole(
  frame: Uint8Array, d: Decoded, rest?: { before: Uint8Array; after: Uint8Array },
): { kind: L4Kind; bytes: Uint8Array; pseudo?: Uint8Array } | undefined {
  const kind = (['tcp', 'udp', 'icmp', 'icmpv6'] as const).find((k) => d.layers[k] !== undefined);
  if (!kind || d.l4Offset === undefined || d.l3End === undefined) return undefined;
  if (d.l3End > frame.length) return undefined;
  if (d.fragment && !rest) return undefined;
  const bytes = concat(rest?.before ?? new Uint8Array(0), frame.subarray(d.l4Offset, d.l3End), rest?.after ?? new Uint8Array(0));
  if (bytes.length < L4_HEADER[kind]) return undefined;
  let pseudo: Uint8Array | undefined;
  if (kind !== 'icmp') {
    // TCP and ICMPv6 take their length from the IP header; UDP from its own length field (RFC 768, RFC 8200 8.1).
    const ipv4 = d.layers.ip;
    const ipv6 = d.layers.ipv6;
    const ipLength = (ipv4 !== undefined ? rd16(frame, ipv4 + 2) - d.l3HeaderLen! : rd16(frame, ipv6! + 4) + 40 - d.l3HeaderLen!)
      + (rest ? rest.before.length + rest.after.length : 0);
    const length = kind === 'udp' ? rd16(bytes, 4) : ipLength;
    pseudo = ipv4 !== undefined
      ? pseudoV4(frame.subarray(ipv4 + 12, ipv4 + 16), frame.subarray(ipv4 + 16, ipv4 + 20), frame[ipv4 + 9]!, length)
      // The pseudo-header names the upper-layer protocol: ipv6.nxt itself only without extension headers.
      : pseudoV6(frame.subarray(ipv6! + 8, ipv6! + 24), frame.subarray(ipv6! + 24, ipv6! + 40),
        d.l3HeaderLen === 40 ? frame[ipv6! + 6]! : d.l4Proto!, length);
  }
  return { kind, bytes, pseudo };
}

// ------------------------------------------------------------------ the reference for `set`

export interface FieldWrite {
  field: FieldDef;
  /** A number in the field's user-visible units, or the bytes of an address. */
  value: number | bigint | Uint8Array;
}

/** Where field f's container starts in a decoded frame, or undefined when its layer is absent. */
export function fieldOffset(d: Decoded, f: FieldDef): number | undefined {
  if (f.layer === 'frame') return undefined;
  const base = d.layers[f.layer];
  return base === undefined ? undefined : base + f.offset;
}

/**
 * Wireshark's tcp.len: the TCP payload length from the IP length field, or undefined when
 * there is no TCP layer or the length field leaves less than a TCP header. IPv4's field is the
 * whole datagram (0 with segmentation offload: to the end of the frame), IPv6's the part after
 * the fixed 40 bytes; the IP header's options or extension headers and the TCP header (its
 * data offset, even a bogus one below 5) are taken off. Absent when that leaves less than the
 * TCP header, or less than 16 bytes (Wireshark reads up to the window first). A length past the frame's end is
 * believed (a capture cut by a snap length). None in a first fragment (MF or M set; an IPv6
 * atomic fragment, offset 0 without M, is a whole segment).
 */
export function tcpPayloadLength(frame: Uint8Array): number | undefined {
  const d = decode(frame);
  const tcp = d.layers.tcp;
  // A fragment carries part of the segment: Wireshark shows no tcp.len.
  if (tcp === undefined || d.fragment?.more) return undefined;
  const ip = d.layers.ip ?? d.layers.ipv6!;
  let datagram: number;
  if (d.layers.ip !== undefined) {
    datagram = rd16(frame, ip + 2);
    if (datagram === 0) datagram = frame.length - ip;
  } else {
    datagram = 40 + rd16(frame, ip + 4);
  }
  const segment = datagram - (tcp - ip);
  const headerLength = (frame[tcp + 12]! >> 4) * 4;
  // Wireshark reads the header up to the window (16 bytes) before it counts the payload.
  if (segment < 16 || segment < headerLength) return undefined;
  return segment - headerLength;
}

/** Reads a numeric field's user-visible value, or undefined when absent. */
export function readField(frame: Uint8Array, f: FieldDef): number | undefined {
  if (f.special === 'frame.len') return frame.length;
  if (f.special === 'tcp.len') return tcpPayloadLength(frame);
  const at = fieldOffset(decode(frame), f);
  if (at === undefined || at + f.width > frame.length) return undefined;
  let c = 0;
  for (let i = 0; i < f.width; i++) c = c * 256 + frame[at + i]!;
  return Math.floor(c / 2 ** f.shift) % (f.mask + 1) * f.scale;
}

/** Writes a field's value into the frame (no checksum work). False when the layer is absent. */
export function writeField(frame: Uint8Array, d: Decoded, f: FieldDef, value: number | bigint | Uint8Array): boolean {
  const at = fieldOffset(d, f);
  if (at === undefined || at + f.width > frame.length) return false;
  if (value instanceof Uint8Array) {
    frame.set(value.subarray(0, f.width), at);
    return true;
  }
  // 64-bit unsigned value as the program computes it, scaled down, then cut to the mask.
  const raw = (BigInt.asUintN(64, BigInt(value)) / BigInt(f.scale)) & BigInt(f.mask);
  let c = 0n;
  for (let i = 0; i < f.width; i++) c = (c << 8n) | BigInt(frame[at + i]!);
  const field = BigInt(f.mask) << BigInt(f.shift);
  c = (c & ~field) | (raw << BigInt(f.shift));
  for (let i = f.width - 1; i >= 0; i--) {
    frame[at + i] = Number(c & 0xffn);
    c >>= 8n;
  }
  return true;
}

/**
 * The frame a compiled rule must produce from `pkt` when it performs these writes: each
 * write applied where its layer is present (in the frame the program sees), then, unless
 * `checksum` is 'keep', the IPv4 header checksum and the L4 checksum recomputed from scratch
 * over the whole datagram (other fragments' bytes included), with two exceptions: a UDP
 * checksum of 0 ("none") stays 0, and checksums of layers the program cannot see (L4 of a
 * non-first fragment, a header cut off) are left as they were.
 */
export function expectedAfterSets(pkt: BuiltPacket, writes: FieldWrite[], checksum: 'fix' | 'keep' = 'fix'): Uint8Array {
  const seen = decode(pkt.frame);
  const whole = pkt.whole.slice();
  const full = decode(whole);
  let wrote = false;
  const visible = (w: FieldWrite): boolean => {
    // Only layers the program sees get written; offsets are the same in the whole frame.
    const at = fieldOffset(seen, w.field);
    return at !== undefined && at + w.field.width <= pkt.frame.length;
  };
  // A checksum field set by the rule keeps the value written: it is written after the fixes.
  const isChecksum = (w: FieldWrite): boolean => w.field.name.endsWith('.checksum');
  for (const w of writes) {
    if (!isChecksum(w) && visible(w)) wrote = writeField(whole, full, w.field, w.value) || wrote;
  }
  if (wrote && checksum === 'fix') {
    const ip = seen.layers.ip;
    if (ip !== undefined && full.l3HeaderLen !== undefined) {
      // Over the header length the header declares after the writes (a receiver's view), when
      // that header is 20 bytes or more and in the frame the program sees; else over the old one.
      const declared = (whole[ip]! & 0x0f) * 4;
      const len = declared >= 20 && ip + declared <= pkt.frame.length ? declared : full.l3HeaderLen;
      wr16(whole, ip + 10, 0);
      wr16(whole, ip + 10, internetChecksum(whole.subarray(ip, ip + len)));
    }
    const kind = (['tcp', 'udp', 'icmp', 'icmpv6'] as const).find((k) => seen.layers[k] !== undefined);
    if (kind) {
      const at = seen.layers[kind]!;
      const csumAt = at + (kind === 'tcp' ? 16 : kind === 'udp' ? 6 : 2);
      const old = rd16(pkt.whole, csumAt);
      if (!(kind === 'udp' && old === 0)) {
        wr16(whole, csumAt, 0);
        const seg = l4Whole(whole, full, full.fragment ? { before: pkt.l4Before, after: pkt.l4After } : undefined);
        if (!seg) throw new Error('reference: cannot assemble the L4 segment of this packet');
        let c = internetChecksum(...(seg.pseudo ? [seg.pseudo] : []), seg.bytes);
        if (kind === 'udp' && c === 0) c = 0xffff;
        wr16(whole, csumAt, c);
      }
    }
  }
  for (const w of writes) {
    if (isChecksum(w) && visible(w)) writeField(whole, full, w.field, w.value);
  }
  return pkt.spec.cut === undefined ? whole : whole.slice(0, pkt.spec.cut);
}

/** Hex of a frame with a marker at the first difference from another, for assertion messages. */
export function diffHex(got: Uint8Array, want: Uint8Array): string {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  if (i === got.length && i === want.length) return 'identical';
  const hex = (b: Uint8Array) => Buffer.from(b.subarray(Math.max(0, i - 4), i + 12)).toString('hex');
  return `first difference at byte ${i} (lengths ${got.length}/${want.length}): got …${hex(got)}… want …${hex(want)}…`;
}
