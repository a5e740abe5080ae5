// Topology files: validation errors that name the line, defaults, addressing and routes.
// No root needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_TOPOLOGY, TopologyError, parseTopology, validateTopology } from '../../src/lab/topology.js';

function problemsOf(text: string): string[] {
  try {
    parseTopology(text, 'lab.yaml');
  } catch (err) {
    assert.ok(err instanceof TopologyError, `expected a TopologyError, got ${String(err)}`);
    assert.equal(err.exitCode, 2);
    return err.problems;
  }
  assert.fail('expected the topology to be refused');
}

test('unknown host in a link: the line of the link end, the known hosts', () => {
  const text = ['hosts:', '  h1: {}', '  h2: {}', 'switch: sw', 'links:', '  - a: h1', '    b: sw', '  - a: h3', '    b: sw', ''].join('\n');
  assert.deepEqual(problemsOf(text), ['lab.yaml:8: links[1].a: unknown host "h3" (hosts are h1, h2; the switch is sw)']);
});

test('unknown key in host options names the key and its line', () => {
  const problems = problemsOf('hosts:\n  h1:\n    gso_max_seg: 1\n');
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /^lab\.yaml:3: hosts\.h1\.gso_max_seg: unknown key "gso_max_seg" \(allowed: gso_max_segs, forwarding, routes\)$/);
});

test('MTU out of range, bad on/off, missing link end, wrong type in an end', () => {
  assert.deepEqual(problemsOf('hosts:\n  h1:\n  h2:\nlinks:\n  - a: h1\n    b: h2\n    mtu: 10\n'), ['lab.yaml:7: links[0].mtu: must be between 68 and 65535']);
  assert.deepEqual(problemsOf('hosts: {h1: , h2: }\nswitch: sw\nlinks:\n  - {a: h1, b: sw, tx_checksum: maybe}\n'), [
    'lab.yaml:4: links[0].tx_checksum: must be on or off',
  ]);
  assert.deepEqual(problemsOf('hosts: {h1: , h2: }\nswitch: sw\nlinks:\n  - a: h1\n'), ['lab.yaml:4: links[0]: missing "b"']);
  assert.deepEqual(problemsOf('hosts: {h1: , h2: }\nlinks:\n  - a: {host: h1, mtu: "x"}\n    b: h2\n'), ['lab.yaml:3: links[0].a.mtu: must be a whole number']);
});

test('bad host name, YAML syntax error, empty file, not a mapping', () => {
  assert.deepEqual(problemsOf('hosts:\n  h1: {}\n  H-2: {}\n'), [
    'lab.yaml:3: hosts.H-2: bad host name "H-2": use a lowercase letter then up to 11 lowercase letters, digits or _',
  ]);
  const syntax = problemsOf('hosts:\n  h1: {\n');
  assert.match(syntax[0]!, /^lab\.yaml:\d+: YAML syntax: /);
  assert.deepEqual(problemsOf(''), ['lab.yaml: the topology is empty (it needs at least hosts:)']);
  assert.deepEqual(problemsOf('- a\n- b\n'), ['lab.yaml:1: (top level): must be a mapping with hosts (and optionally switch, links, name)']);
});

test('address problems: no prefix length, used twice, on the switch', () => {
  assert.match(problemsOf('hosts: {h1: , h2: }\nlinks:\n  - a: {host: h1, addresses: [198.18.9.1]}\n    b: h2\n')[0]!, /^lab\.yaml:3: links\[0\]\.a\.addresses\[0\]: "198\.18\.9\.1" is not an address with a prefix length/);
  assert.deepEqual(
    problemsOf('hosts: {h1: , h2: }\nlinks:\n  - a: {host: h1, addresses: [198.18.5.1/24]}\n    b: {host: h2, addresses: [198.18.5.1/24]}\n'),
    ['lab.yaml:4: links[0].b.addresses[0]: address 198.18.5.1 is already used by h1 eth0'],
  );
  assert.match(problemsOf('hosts: {h1: }\nswitch: sw\nlinks:\n  - a: h1\n    b: {host: sw, addresses: [198.18.0.9/24]}\n')[0]!, /links\[0\]\.b\.addresses: the switch has no addresses/);
});

test('several problems are all reported, the first as the message', () => {
  const text = 'hosts: {h1: , h2: }\nlinks:\n  - {a: h1, b: h9}\n  - {a: h2, b: h7}\n';
  try {
    parseTopology(text, 'lab.yaml');
    assert.fail('expected an error');
  } catch (err) {
    assert.ok(err instanceof TopologyError);
    assert.equal(err.problems.length, 2);
    assert.equal(err.message, 'lab.yaml:3: links[0].b: unknown host "h9" (hosts are h1, h2)');
    assert.match(err.hint ?? '', /lab\.yaml:4: links\[1\]\.b: unknown host "h7"/);
  }
});

test('objects given to the library are checked the same way, without line numbers', () => {
  assert.throws(() => validateTopology({ hosts: { h1: {} }, links: [{ a: 'h1', b: 'h2' }] }), {
    message: 'topology: links[0].b: unknown host "h2" (hosts are h1)',
  });
});

test('built-in default: h1 ── sw ── h2 with eth0 on the hosts and addresses from the test ranges', () => {
  const plan = validateTopology(DEFAULT_TOPOLOGY);
  assert.equal(plan.switch, 'sw');
  assert.deepEqual(plan.hosts.map((h) => h.name), ['h1', 'h2']);
  assert.deepEqual(
    plan.links.map((l) => [l.a.node, l.a.dev, l.a.addresses, l.b.node, l.b.dev, l.b.addresses]),
    [
      ['h1', 'eth0', ['198.18.0.1/24', '2001:db8::1/64'], 'sw', 'h1', []],
      ['h2', 'eth0', ['198.18.0.2/24', '2001:db8::2/64'], 'sw', 'h2', []],
    ],
  );
  assert.deepEqual(plan.hosts.map((h) => h.routes), [[], []]);
});

test('a switch without links joins every host; a file name: is kept', () => {
  const plan = parseTopology('name: three\nswitch: s\nhosts:\n  a:\n  b:\n  c:\n');
  assert.equal(plan.name, 'three');
  assert.deepEqual(plan.links.map((l) => `${l.a.node}:${l.a.dev}-${l.b.node}:${l.b.dev}`), ['a:eth0-s:a', 'b:eth0-s:b', 'c:eth0-s:c']);
  assert.deepEqual(plan.links.map((l) => l.a.addresses[0]), ['198.18.0.1/24', '198.18.0.2/24', '198.18.0.3/24']);
});

test('direct links get a subnet each; a host on two subnets forwards and the others route through it', () => {
  const plan = parseTopology('hosts:\n  h1:\n  r:\n  h3:\nlinks:\n  - {a: h1, b: r, mtu: 1400, tx_checksum: off}\n  - {a: r, b: {host: h3, rx_checksum: on}}\n');
  const [l0, l1] = plan.links;
  assert.equal(l0!.a.mtu, 1400);
  assert.equal(l0!.b.mtu, 1400);
  assert.equal(l0!.a.txChecksum, false);
  assert.equal(l1!.a.mtu, undefined);
  assert.equal(l1!.b.rxChecksum, true);
  assert.deepEqual([l1!.a.dev, l1!.b.dev], ['eth1', 'eth0']);
  assert.deepEqual(l1!.b.addresses, ['198.18.1.2/24', '2001:db8:0:1::2/64']);
  const byName = Object.fromEntries(plan.hosts.map((h) => [h.name, h]));
  assert.equal(byName.r!.forwarding, true);
  assert.equal(byName.h1!.forwarding, false);
  assert.deepEqual(byName.h1!.routes, [
    { to: '198.18.1.0/24', via: '198.18.0.2' },
    { to: '2001:db8:0:1::/64', via: '2001:db8::2' },
  ]);
  assert.deepEqual(byName.h3!.routes, [
    { to: '198.18.0.0/24', via: '198.18.1.1' },
    { to: '2001:db8::/64', via: '2001:db8:0:1::1' },
  ]);
  assert.deepEqual(byName.r!.routes, []);
});

test('explicit addresses replace the automatic ones and automatic ones avoid them', () => {
  const plan = parseTopology('switch: sw\nhosts: {a: , b: }\nlinks:\n  - {a: {host: a, addresses: [198.18.0.2/24]}, b: sw}\n  - {a: b, b: sw}\n');
  assert.deepEqual(plan.links[0]!.a.addresses, ['198.18.0.2/24']);
  assert.deepEqual(plan.links[1]!.a.addresses, ['198.18.0.1/24', '2001:db8::1/64']);
});

test('two links from one host to the switch get distinct port names', () => {
  const plan = parseTopology('switch: sw\nhosts: {a: }\nlinks:\n  - {a: a, b: sw}\n  - {a: a, b: sw}\n');
  assert.deepEqual(plan.links.map((l) => [l.a.dev, l.b.dev]), [['eth0', 'a-1'], ['eth1', 'a-2']]);
});

test('an MTU below 1280 with IPv6 addresses is refused before anything is built', () => {
  assert.deepEqual(problemsOf('hosts: {a: , b: }\nlinks:\n  - {a: a, b: b, mtu: 1000}\n'), [
    'lab.yaml:3: links[0].a: MTU 1000 is below 1280, the least IPv6 allows; raise it or give this end IPv4 addresses only (addresses: [...])',
    'lab.yaml:3: links[0].b: MTU 1000 is below 1280, the least IPv6 allows; raise it or give this end IPv4 addresses only (addresses: [...])',
  ]);
  const plan = parseTopology('hosts: {a: , b: }\nlinks:\n  - {a: {host: a, addresses: [198.18.0.1/24]}, b: {host: b, addresses: [198.18.0.2/24]}, mtu: 576}\n');
  assert.equal(plan.links[0]!.a.mtu, 576);
});
