/**
 * docs/fields.md, generated from the catalog so the documentation cannot drift from the code.
 * Regenerate with `npx tsc -p . && node dist/src/rules/field-table.js > docs/fields.md`;
 * a test fails when the committed file differs from what this renders.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FieldDef, Layer } from './ast.js';
import { fieldCatalog, HEADER_SIZE, hookCannotSee, protocolDescription } from './catalog.js';

const LAYER_TITLES: Record<Layer, string> = {
  frame: 'Frame',
  eth: 'Ethernet (eth)',
  vlan: '802.1Q VLAN tag (vlan)',
  ip: 'IPv4 (ip)',
  ipv6: 'IPv6 (ipv6)',
  tcp: 'TCP (tcp)',
  udp: 'UDP (udp)',
  icmp: 'ICMP (icmp)',
  icmpv6: 'ICMPv6 (icmpv6)',
};

function valueColumn(f: FieldDef): string {
  switch (f.kind) {
    case 'bool':
      return '0 or 1';
    case 'ipv4':
      return 'IPv4 address';
    case 'ipv6':
      return 'IPv6 address';
    case 'mac':
      return 'MAC address';
    case 'uint':
      return f.scale === 1 ? `0 to ${f.max}` : `0 to ${f.max}, steps of ${f.scale}`;
  }
}

function whereColumn(f: FieldDef): string {
  if (f.special === 'frame.len') return 'packet length';
  if (f.special === 'tcp.len') return 'computed from the length fields';
  const bytes = f.width === 1 ? `byte ${f.offset}` : `bytes ${f.offset}-${f.offset + f.width - 1}`;
  const fullWidth = f.mask === 0 || f.mask === (f.width >= 4 ? 0xffffffff : 2 ** (f.width * 8) - 1);
  if (fullWidth && f.shift === 0) return bytes;
  const bits = Math.round(Math.log2(f.mask + 1));
  const hi = f.shift + bits - 1;
  const range = bits === 1 ? `bit ${f.shift}` : `bits ${hi}-${f.shift}`;
  return `${bytes}, ${range}`;
}

function checksumColumn(f: FieldDef): string {
  if (f.covers.length === 0) return '';
  return f.covers.map((c) => (c === 'ipv4-header' ? 'IPv4 header' : c === 'l4' ? 'L4' : 'L4 pseudo-header')).join(', ');
}

function writableColumn(f: FieldDef): string {
  if (f.either) return `no (${f.either.join(' or ')})`;
  return f.writable ? 'yes' : 'no';
}

/** The whole of docs/fields.md. */
export function renderFieldTable(): string {
  const out: string[] = [];
  out.push('# Fields');
  out.push('');
  out.push('<!-- Generated from src/rules/catalog.ts by renderFieldTable(); do not edit by hand.');
  out.push('     Regenerate: npx tsc -p . && node dist/src/rules/field-table.js > docs/fields.md -->');
  out.push('');
  out.push('Every field a rule can read or `set`, named as in Wireshark\'s display filters, so a');
  out.push('match can be tried in Wireshark first. Units are Wireshark 4\'s: `ip.hdr_len` and');
  out.push('`tcp.hdr_len` are bytes, `ip.frag_offset` is in 8-byte units, `tcp.flags` is the 12-bit');
  out.push('flags field (reserved bits and AE included). Where a field differs from Wireshark, its');
  out.push('description says how.');
  out.push('');
  out.push('- **Where**: byte offset from the start of the layer\'s header (big-endian); for a field');
  out.push('  inside a word, its bits counted from the least significant bit of those bytes.');
  out.push('- **Checksums**: what netmangle fixes after a `set` (unless the rule has `checksum: keep`).');
  out.push('  "L4" is the TCP, UDP, ICMP or ICMPv6 checksum; "L4 pseudo-header" the TCP, UDP or');
  out.push('  (for IPv6) ICMPv6 checksum through the pseudo-header.');
  out.push('- A field whose layer the packet lacks makes every test on it false (`not` turns that');
  out.push('  around), and a `set` on it does nothing. TCP, UDP and ICMP exist only in the first');
  out.push('  fragment of an IPv4 packet.');
  out.push('- Match-only fields (`ip.addr`, `ipv6.addr`, `tcp.port`, `udp.port`) test both fields:');
  out.push('  `==`, `<`, `in` … hold when either side does; `!=` holds when neither side equals.');
  out.push('');
  out.push('## Protocol names');
  out.push('');
  out.push('A bare protocol name in a match tests that the packet has that header.');
  out.push('');
  out.push('| Name | Matches |');
  out.push('|---|---|');
  for (const p of fieldCatalog.protocols) out.push(`| \`${p}\` | ${protocolDescription(p)} |`);
  out.push('');
  for (const layer of fieldCatalog.protocols) {
    const fields = fieldCatalog.layerFields(layer);
    if (fields.length === 0) continue;
    out.push(`## ${LAYER_TITLES[layer]}`);
    out.push('');
    const notes: string[] = [];
    if (HEADER_SIZE[layer] > 0) notes.push(`Fixed header: ${HEADER_SIZE[layer]} bytes.`);
    const hidden = (['xdp', 'ingress', 'egress'] as const).filter((h) => hookCannotSee(layer, h));
    if (hidden.length > 0) {
      notes.push(`Not available at the ${hidden.join(' and ')} hook${hidden.length > 1 ? 's' : ''}: ${hookCannotSee(layer, hidden[0]!)!.replace(/^at the tc \w+ hook /, 'at tc ')}` +
        ' (into the socket buffer\'s metadata), so a rule on a tc hook that names one of these fields is refused.');
    }
    if (notes.length > 0) out.push(notes.join(' '), '');
    out.push('| Field | Value | Where | Writable | Checksums | Description |');
    out.push('|---|---|---|---|---|---|');
    for (const f of fields) {
      out.push(`| \`${f.name}\` | ${valueColumn(f)} | ${whereColumn(f)} | ${writableColumn(f)} | ${checksumColumn(f)} | ${f.description} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

function isMain(): boolean {
  const arg = process.argv[1];
  if (!arg) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) process.stdout.write(renderFieldTable());
