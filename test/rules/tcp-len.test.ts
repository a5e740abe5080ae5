/**
 * The rule language's side of tcp.len (Wireshark's TCP payload length): it resolves, needs TCP,
 * compares with numbers, and cannot be set.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lookupField, nearestField } from '../../src/rules/catalog.js';
import { renderFieldTable } from '../../src/rules/field-table.js';
import { assertRuleError, rule } from './helpers.js';

test('tcp.len is a computed, match-only field of the TCP layer', () => {
  const f = lookupField('tcp.len')!;
  assert.equal(f.layer, 'tcp');
  assert.equal(f.special, 'tcp.len');
  assert.equal(f.writable, false);
  assert.deepEqual(f.covers, []);
  // Not the header length it once was an alias of.
  assert.notEqual(f, lookupField('tcp.hdr_len'));
});

test('rules that match on tcp.len are accepted at every hook, alone and in arithmetic', () => {
  for (const hook of ['xdp', 'ingress', 'egress'] as const) {
    const r = rule('tcp.flags.push and tcp.len > 100 => drop', hook);
    assert.equal(r.match.kind, 'and');
  }
  rule('tcp.len == 0 and tcp.flags.ack => drop');
  rule('tcp.len in {0 1..10} => drop');
  rule('tcp.len + tcp.hdr_len > 60 => drop');
  rule('tcp => set ip.ttl = min(tcp.len, 255)');
});

test('setting tcp.len is refused with one line that says why and what to set instead', () => {
  const err = assertRuleError('tcp => set tcp.len = 5', /^tcp\.len is computed from the IP and TCP length fields and can only be matched$/, 'tcp.len');
  assert.match(err.hint ?? '', /ip\.len or ipv6\.plen/);
});

test('names people reach for lead to tcp.len', () => {
  assert.equal(nearestField('tcp.seglen'), 'tcp.len');
  assert.equal(nearestField('tcp.payload_len'), 'tcp.len');
  assertRuleError('tcp.seglen > 3 => drop', /did you mean tcp\.len\?/, 'tcp.seglen');
});

test('the field table shows tcp.len as computed and not writable', () => {
  assert.match(renderFieldTable(), /\| `tcp\.len` \| 0 to 4294967295 \| computed from the length fields \| no \|  \| Payload length in bytes/);
});
