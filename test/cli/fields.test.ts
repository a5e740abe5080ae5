// `netmangle fields [PATTERN]`: the catalog's fields, as the command line lists them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FIELDS } from '../../src/rules/catalog.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const netmangle = (...args: string[]) => spawnSync(process.execPath, [join(repo, 'bin', 'netmangle'), ...args], { encoding: 'utf8' });

test('fields with no pattern lists every field of the catalog, one line each under a header', () => {
  const r = netmangle('fields');
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^field +type +settable +hooks +description$/);
  assert.deepEqual(lines.slice(1).map((l) => l.split(/ +/)[0]), FIELDS.map((f) => f.name));
  assert.match(r.stdout, /^ip\.ttl +uint 0\.\.255 +yes +xdp,ingress,egress +/m);
  assert.match(r.stdout, /^ip\.addr +ipv4 +no +/m, 'either-side fields are match-only');
  assert.match(r.stdout, /^ip\.hdr_len +uint 0\.\.60 step 4 +/m);
});

test('a pattern filters: a part of the name, or a glob; --json gives the same rows', () => {
  const glob = JSON.parse(netmangle('fields', 'tcp.flags.*', '--json').stdout) as Array<{ name: string; type: string; settable: boolean; hooks: string[]; description: string }>;
  assert.ok(glob.length >= 9);
  assert.ok(glob.every((f) => f.name.startsWith('tcp.flags.')));
  assert.deepEqual(glob.find((f) => f.name === 'tcp.flags.push'), { name: 'tcp.flags.push', type: 'bool', settable: true, hooks: ['xdp', 'ingress', 'egress'], description: glob.find((f) => f.name === 'tcp.flags.push')!.description });
  const part = netmangle('fields', 'TTL');
  assert.equal(part.status, 0);
  assert.deepEqual(part.stdout.trimEnd().split('\n').slice(1).map((l) => l.split(/ +/)[0]), FIELDS.filter((f) => f.name.includes('ttl')).map((f) => f.name));
  // The outer VLAN tag is gone from the packet by the time tc runs.
  const vlan = JSON.parse(netmangle('fields', 'vlan.*', '--json').stdout) as Array<{ hooks: string[] }>;
  assert.ok(vlan.length > 0 && vlan.every((f) => f.hooks.join() === 'xdp'));
});

test('a pattern nothing matches is a usage error (exit 2)', () => {
  const r = netmangle('fields', 'no.such.thing');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^netmangle: no field matches "no\.such\.thing"\n/);
});
