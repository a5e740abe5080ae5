/**
 * Every writable field of the catalog, set to a few values (0, a middle value, the maximum)
 * by a compiled rule in the kernel, over every packet shape: the output must equal the
 * reference (tests/helpers/packets.ts) byte for byte. Packets without the field's layer must
 * come back unchanged, and checksums must be right wherever the program could see them.
 */
import assert from 'node:assert/strict';
import { FIELDS } from '../../src/rules/catalog.js';
import type { FieldDef, Hook } from '../../src/rules/ast.js';
import { kernelTest } from '../helpers/kernel.js';
import { decode, diffHex, expectedAfterSets, ipv4Bytes, ipv6Bytes, macBytes, onesSum, type FieldWrite } from '../helpers/packets.js';
import { run, verdictsAt, withRules } from './harness.js';
import { shapesFor } from './shapes.js';

/** Values to set, as rule text and as the reference's value. */
function valuesFor(f: FieldDef): Array<{ text: string; value: FieldWrite['value'] }> {
  switch (f.kind) {
    case 'mac':
      return [{ text: '02:aa:bb:cc:dd:ee', value: macBytes('02:aa:bb:cc:dd:ee') }, { text: 'ff:ff:ff:ff:ff:ff', value: macBytes('ff:ff:ff:ff:ff:ff') }];
    case 'ipv4':
      return [
        { text: '198.19.255.254', value: ipv4Bytes('198.19.255.254') },
        { text: '0.0.0.0', value: ipv4Bytes('0.0.0.0') },
        { text: '255.255.255.255', value: ipv4Bytes('255.255.255.255') },
      ];
    case 'ipv6':
      return [
        { text: '2001:db8:ffff::fe', value: ipv6Bytes('2001:db8:ffff::fe') },
        { text: '::', value: ipv6Bytes('::') },
        { text: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', value: ipv6Bytes('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff') },
      ];
    default: {
      const middle = Math.floor(f.max / 2 / f.scale) * f.scale + (f.max >= 3 * f.scale ? f.scale : 0);
      const values = [...new Set([0, middle, f.max])];
      return values.map((v) => ({ text: String(v), value: v }));
    }
  }
}

const HOOKS: Hook[] = ['xdp', 'egress'];

const writable = FIELDS.filter((f) => f.writable);

kernelTest('the catalog has writable fields in every layer (the generated tests cover them)', () => {
  const layers = new Set(writable.map((f) => f.layer));
  for (const l of ['eth', 'vlan', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6'] as const) assert.ok(layers.has(l), l);
  assert.ok(writable.length >= 60, `${writable.length} writable fields`);
});

for (const hook of HOOKS) {
  for (const f of writable) {
    if (hook !== 'xdp' && f.layer === 'vlan') continue; // the checker refuses VLAN fields at tc
    kernelTest(`${hook}: set ${f.name} over every packet shape`, () => {
      const failures: string[] = [];
      let changed = 0;
      for (const { text, value } of valuesFor(f)) {
        withRules(hook, `frame => set ${f.name} = ${text}`, (p) => {
          for (const [name, pkt] of shapesFor(hook)) {
            const got = run(p, pkt.frame);
            const want = expectedAfterSets(pkt, [{ field: f, value }]);
            if (got.retval !== verdictsAt(hook).none) failures.push(`${name}, value ${text}: verdict ${got.retval}`);
            if (Buffer.compare(got.data, want) !== 0) failures.push(`${name}, value ${text}: ${diffHex(got.data, want)}`);
            if (Buffer.compare(got.data, pkt.frame) !== 0) changed++;
          }
        });
      }
      assert.deepEqual(failures, []);
      assert.ok(changed > 0, 'at least one packet was changed');
    });
  }
}

// A new header length changes what the header checksum covers: the checksum must be right
// over the header the packet now declares, as a receiver checks it (issue: `set ip.hdr_len = 24`
// left it wrong on every packet).
for (const hook of ['xdp', 'ingress', 'egress'] as const) {
  kernelTest(`${hook}: set ip.hdr_len = 24 leaves a header checksum right over the 24 bytes declared`, () => {
    const f = FIELDS.find((x) => x.name === 'ip.hdr_len')!;
    const failures: string[] = [];
    let checked = 0;
    withRules(hook, 'ip => set ip.hdr_len = 24', (p) => {
      for (const [name, pkt] of shapesFor(hook)) {
        const d = decode(pkt.frame);
        if (d.layers.ip === undefined) continue;
        const got = run(p, pkt.frame);
        const want = expectedAfterSets(pkt, [{ field: f, value: 24 }]);
        if (Buffer.compare(got.data, want) !== 0) failures.push(`${name}: ${diffHex(got.data, want)}`);
        const ip = d.layers.ip;
        if (ip + 24 > got.data.length) continue;
        checked++;
        assert.equal(got.data[ip]! & 0x0f, 6, name);
        if (onesSum(got.data.subarray(ip, ip + 24)) !== 0xffff) failures.push(`${name}: header checksum wrong over 24 bytes`);
      }
    });
    assert.deepEqual(failures, []);
    assert.ok(checked >= 5, `${checked} IPv4 packets checked`);
  });
}
