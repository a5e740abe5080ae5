/**
 * Which catalog fields a rule changed in a packet, for the comments `netmangle replay` puts on
 * changed packets in a pcapng output ("psh-1-in-10: tcp.flags.push 0→1, tcp.checksum 0x1c2e→0x142e").
 *
 * Layers are located the way the compiled programs find them (src/compiler/codegen.ts, `parse`):
 * up to two VLAN tags, IPv4 with options (L4 only in an unfragmented datagram or a first
 * fragment), IPv6 with up to six extension headers (hop-by-hop, routing, destination options,
 * fragment, authentication), and an L4 layer only when its whole fixed header is in the frame.
 * Offsets and masks come from the field catalog (src/rules/catalog.ts), the one description of
 * packet layout.
 */
import type { FieldDef, Layer } from '../rules/ast.js';
import { FIELDS } from '../rules/catalog.js';

const ETH_P_IP = 0x0800, ETH_P_IPV6 = 0x86dd, ETH_P_8021Q = 0x8100, ETH_P_8021AD = 0x88a8;
const MAX_VLAN_TAGS = 2;
const IPV6_EXT_MAX = 6;

/** Start of each layer's header in a frame; absent layers are missing. */
export type LayerOffsets = Partial<Record<Layer, number>>;

const rd16 = (b: Uint8Array, o: number): number => (b[o]! << 8) | b[o + 1]!;

/** Where each layer the compiled programs would see starts in `frame`. */
export function locateLayers(frame: Uint8Array): LayerOffsets {
  const out: LayerOffsets = { frame: 0 };
  const n = frame.length;
  if (n < 14) return out;
  out.eth = 0;
  let type = rd16(frame, 12);
  let l3 = 14;
  for (let tag = 0; tag < MAX_VLAN_TAGS && (type === ETH_P_8021Q || type === ETH_P_8021AD); tag++) {
    if (n < l3 + 4) return out;
    if (tag === 0) out.vlan = 14;
    type = rd16(frame, l3 + 2);
    l3 += 4;
  }
  let l4 = -1;
  let proto = -1;
  if (type === ETH_P_IP) {
    if (n < l3 + 20 || frame[l3]! >> 4 !== 4 || (frame[l3]! & 0xf) < 5) return out;
    out.ip = l3;
    if ((rd16(frame, l3 + 6) & 0x1fff) !== 0) return out;
    proto = frame[l3 + 9]!;
    l4 = l3 + (frame[l3]! & 0xf) * 4;
    if (proto === 58) return out; // ICMPv6 is not ICMP over IPv4
  } else if (type === ETH_P_IPV6) {
    if (n < l3 + 40 || frame[l3]! >> 4 !== 6) return out;
    out.ipv6 = l3;
    proto = frame[l3 + 6]!;
    l4 = l3 + 40;
    for (let i = 0; i < IPV6_EXT_MAX; i++) {
      if (proto !== 0 && proto !== 43 && proto !== 60 && proto !== 44 && proto !== 51) break;
      if (n < l4 + 8) return out;
      if (proto === 44) {
        if ((rd16(frame, l4 + 2) & 0xfff8) !== 0) return out;
        proto = frame[l4]!;
        l4 += 8;
      } else if (proto === 51) {
        const len = (frame[l4 + 1]! + 2) * 4;
        proto = frame[l4]!;
        l4 += len;
      } else {
        const len = (frame[l4 + 1]! + 1) * 8;
        proto = frame[l4]!;
        l4 += len;
      }
    }
    if (proto === 1) return out; // ICMP over IPv6 is not a layer the programs parse
  } else {
    return out;
  }
  const layer: Layer | undefined = proto === 6 ? 'tcp' : proto === 17 ? 'udp' : proto === 1 ? 'icmp' : proto === 58 ? 'icmpv6' : undefined;
  if (!layer) return out;
  const size = layer === 'tcp' ? 20 : 8;
  if (n >= l4 + size) out[layer] = l4;
  return out;
}

/** One field that differs between two versions of a packet. */
export interface FieldChange {
  field: FieldDef;
  before: string;
  after: string;
}

/**
 * Fields worth listing: real (not `either`), not computed from other fields (tcp.len follows
 * ip.len or ipv6.plen, which are listed when they change), and not a second name for the same
 * bits (tcp.seq_raw).
 */
const LISTED: readonly FieldDef[] = FIELDS.filter((f, i) => {
  if (f.either || f.special === 'tcp.len') return false;
  return !FIELDS.slice(0, i).some((g) => !g.either && g.layer === f.layer && g.offset === f.offset && g.width === f.width
    && g.shift === f.shift && g.mask === f.mask && g.scale === f.scale && g.special === f.special);
});

/** Fields shown in hexadecimal, as Wireshark shows them. */
const HEX = /\.checksum$|^(tcp\.flags|eth\.type|vlan\.etype|ip\.dsfield|ipv6\.tclass|ipv6\.flow)$/;

function readContainer(b: Uint8Array, at: number, width: number): number {
  let v = 0;
  for (let i = 0; i < width; i++) v = v * 256 + b[at + i]!;
  return v;
}

function formatBytes(f: FieldDef, b: Uint8Array, at: number): string {
  const bytes = b.subarray(at, at + f.width);
  if (f.kind === 'ipv4') return Array.from(bytes).join('.');
  if (f.kind === 'mac') return Array.from(bytes, (x) => x.toString(16).padStart(2, '0')).join(':');
  if (f.kind === 'ipv6') return formatIpv6(bytes);
  return Array.from(bytes, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** RFC 5952 text: lower case, the longest run of two or more zero words as "::". */
export function formatIpv6(b: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((b[i]! << 8) | b[i + 1]!);
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(':');
  if (best < 0) return hex(words);
  return `${hex(words.slice(0, best))}::${hex(words.slice(best + bestLen))}`;
}

function formatValue(f: FieldDef, v: number): string {
  if (HEX.test(f.name) && f.kind !== 'bool') {
    const digits = Math.max(1, Math.ceil((32 - Math.clz32(f.mask)) / 4));
    return `0x${v.toString(16).padStart(digits, '0')}`;
  }
  return String(v);
}

/** Bits of a field as masks of the bytes it spans, relative to the field's offset: [byte, mask] pairs. */
function fieldBits(f: FieldDef): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  if (f.width === 6 || f.width === 16) {
    for (let i = 0; i < f.width; i++) out.push([i, 0xff]);
    return out;
  }
  const bits = f.mask * 2 ** f.shift;
  for (let i = 0; i < f.width; i++) {
    const shift = 8 * (f.width - 1 - i);
    const m = Math.floor(bits / 2 ** shift) & 0xff;
    if (m !== 0) out.push([i, m]);
  }
  return out;
}

/** Each listed field with its bytes' masks and its width in bits, computed once. */
const LISTED_BITS = LISTED.map((f) => {
  const bits = fieldBits(f);
  return { field: f, bits, size: bits.reduce((n, [, m]) => n + popcount(m), 0) };
});

/**
 * The catalog fields whose values differ between `before` and `after` (two versions of one
 * frame), in catalog order. Fields are read at the positions the layers had in `before`, where
 * the program found them. A field is left out when narrower listed fields account for every
 * bit of it that changed (tcp.flags when only tcp.flags.push did), so the list names what a
 * rule set, plus the checksums fixed for it.
 */
export function changedFields(before: Uint8Array, after: Uint8Array): FieldChange[] {
  const layers = locateLayers(before);
  const candidates: Array<{ field: FieldDef; at: number; bits: Array<[number, number]>; size: number }> = [];
  const lengthChanged = before.length !== after.length;
  for (const { field: f, bits, size } of LISTED_BITS) {
    if (f.special === 'frame.len') {
      if (lengthChanged) candidates.push({ field: f, at: 0, bits: [], size: Infinity });
      continue;
    }
    const base = layers[f.layer];
    if (base === undefined) continue;
    const at = base + f.offset;
    if (at + f.width > before.length || at + f.width > after.length) continue;
    let changedBits: Array<[number, number]> | undefined;
    for (const [i, mask] of bits) {
      const d = (before[at + i]! ^ after[at + i]!) & mask;
      if (d !== 0) (changedBits ??= []).push([at + i, d]);
    }
    if (changedBits) candidates.push({ field: f, at, bits: changedBits, size });
  }
  const out: FieldChange[] = [];
  for (const c of candidates) {
    // Covered when every changed bit is also a changed bit of a narrower candidate.
    const covered = c.bits.length > 0 && c.bits.every(([byte, mask]) => {
      let m = 0;
      for (const o of candidates) {
        if (o === c || o.size >= c.size) continue;
        for (const [ob, om] of o.bits) if (ob === byte) m |= om;
      }
      return (mask & ~m) === 0;
    });
    if (covered) continue;
    const f = c.field;
    if (f.special === 'frame.len') {
      out.push({ field: f, before: String(before.length), after: String(after.length) });
    } else if (f.width === 6 || f.width === 16 || f.kind === 'ipv4') {
      out.push({ field: f, before: formatBytes(f, before, c.at), after: formatBytes(f, after, c.at) });
    } else {
      const value = (buf: Uint8Array) => (Math.floor(readContainer(buf, c.at, f.width) / 2 ** f.shift) % (f.mask + 1)) * f.scale;
      out.push({ field: f, before: formatValue(f, value(before)), after: formatValue(f, value(after)) });
    }
  }
  return out;
}

function popcount(x: number): number {
  let n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}

/** "tcp.flags.push 0→1, tcp.checksum 0x1c2e→0x142e" */
export function formatChanges(changes: readonly FieldChange[]): string {
  return changes.map((c) => `${c.field.name} ${c.before}→${c.after}`).join(', ');
}

/** Byte offsets where two frames differ, for changes no listed field accounts for. */
export function differingBytes(before: Uint8Array, after: Uint8Array): number[] {
  const out: number[] = [];
  const n = Math.max(before.length, after.length);
  for (let i = 0; i < n; i++) if (before[i] !== after[i]) out.push(i);
  return out;
}
