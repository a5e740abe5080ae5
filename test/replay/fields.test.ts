import { test } from 'node:test';
import assert from 'node:assert/strict';
import { changedFields, formatChanges, locateLayers } from '../../src/replay/fields.js';
import { decode, expectedAfterSets, type FieldWrite } from '../helpers/packets.js';
import { lookupField } from '../../src/rules/catalog.js';
import { shape, shapes } from '../compiler/shapes.js';

test('locateLayers finds the layers the compiled programs see, for every packet shape', () => {
  for (const [name, p] of shapes()) {
    const want = decode(p.frame).layers;
    const got = locateLayers(p.frame);
    delete got.frame;
    assert.deepEqual(got, want, name);
  }
});

function after(name: Parameters<typeof shape>[0], writes: Array<[string, number | Uint8Array]>, checksum: 'fix' | 'keep' = 'fix') {
  const p = shape(name);
  const w: FieldWrite[] = writes.map(([f, value]) => ({ field: lookupField(f)!, value }));
  return { before: p.frame, after: expectedAfterSets(p, w, checksum) };
}

const names = (b: Uint8Array, a: Uint8Array) => changedFields(b, a).map((c) => c.field.name);

test('a flag set: the flag and the checksum, not the whole flags field', () => {
  const { before, after: a } = after('ipv4 tcp ack', [['tcp.flags.push', 1]]);
  assert.deepEqual(names(before, a), ['tcp.flags.push', 'tcp.checksum']);
  const text = formatChanges(changedFields(before, a));
  assert.match(text, /^tcp\.flags\.push 0→1, tcp\.checksum 0x[0-9a-f]{4}→0x[0-9a-f]{4}$/);
  const sum = (f: Uint8Array) => ((f[50]! << 8) | f[51]!).toString(16).padStart(4, '0');
  assert.equal(text, `tcp.flags.push 0→1, tcp.checksum 0x${sum(before)}→0x${sum(a)}`);
});

test('the TTL in decimal, the header checksum in hex; checksum keep lists the TTL alone', () => {
  const { before, after: a } = after('ipv4 icmp echo reply', [['ip.ttl', 9]]);
  assert.deepEqual(changedFields(before, a).map((c) => [c.field.name, c.before, c.after]).slice(0, 1), [['ip.ttl', '57', '9']]);
  assert.deepEqual(names(before, a), ['ip.ttl', 'ip.checksum']);
  const kept = after('ipv4 icmp echo reply', [['ip.ttl', 9]], 'keep');
  assert.deepEqual(names(kept.before, kept.after), ['ip.ttl']);
});

test('a whole byte of sub-fields set: each sub-field named, the byte not repeated', () => {
  const { before, after: a } = after('ipv4 udp', [['ip.dsfield', 0x03]]); // tos 0xb8 → 0x03: DSCP and ECN both change
  assert.deepEqual(names(before, a), ['ip.dsfield.dscp', 'ip.dsfield.ecn', 'ip.checksum']);
});

test('addresses print as addresses; a second name for the same bits (tcp.seq_raw) is not listed', () => {
  const v4 = after('ipv4 tcp ack', [['ip.dst', Uint8Array.from([198, 19, 0, 7])], ['tcp.seq', 7]]);
  const c4 = changedFields(v4.before, v4.after);
  assert.deepEqual(c4.map((c) => c.field.name), ['ip.checksum', 'ip.dst', 'tcp.seq', 'tcp.checksum']);
  assert.deepEqual([c4[1]!.before, c4[1]!.after], ['198.18.0.2', '198.19.0.7']);
  const v6 = after('ipv6 udp', [['ipv6.dst', Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9])]]);
  const c6 = changedFields(v6.before, v6.after);
  assert.deepEqual(c6.map((c) => `${c.field.name} ${c.before}→${c.after}`), [
    'ipv6.dst 2001:db8:1::2→2001:db8::9', `udp.checksum ${c6[1]!.before}→${c6[1]!.after}`,
  ]);
  const mac = after('ipv4 udp', [['eth.src', Uint8Array.from([2, 0, 0, 0, 0, 0xaa])]]);
  assert.deepEqual(changedFields(mac.before, mac.after).map((c) => `${c.field.name} ${c.before}→${c.after}`), ['eth.src 02:00:00:00:00:01→02:00:00:00:00:aa']);
});

test('fields are read where the layers were before the change (ip.hdr_len moves nothing)', () => {
  const { before, after: a } = after('ipv4 tcp ack', [['ip.hdr_len', 24]]);
  assert.deepEqual(names(before, a), ['ip.hdr_len', 'ip.checksum']);
});

test('no change, no fields', () => {
  const p = shape('vlan ipv4 tcp').frame;
  assert.deepEqual(changedFields(p, p.slice()), []);
});
